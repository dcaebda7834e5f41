"""The back-office (the outbox's screens, and what an operator of the whole system needs): FastAPI
pages rendered with Jinja2 and driven by htmx, under ``/backoffice/``.

Every page action calls one library function of the part that owns the data (the outbox's
store and requeue, the registry, the dead-letter helpers, the event store), the same
functions the CLI calls. See ``docs/backoffice.md``.
"""
