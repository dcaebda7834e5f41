"""The runnable system: the registry of parts, the HTTP app and its lifespan, the server, and
the wiring of ``rabbitry up`` / ``serve NAME`` / ``worker NAME``."""
