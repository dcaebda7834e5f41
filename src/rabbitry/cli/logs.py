"""The log of Rabbitry's processes: one line per event from the broker client underneath.

The declarer (topology, the back-office's queue reads) runs on aio-pika. During any broker
restart or node loss, aio-pika and aiormq log each refused connect and forced close at ERROR,
some with a traceback, while the reconnect is routine and Rabbitry's own log already tells
what it means ("broker connection lost ...; again in 0.3s", a call failing as broker
trouble). An operator would chase those ERRORs; they are kept, as WARNINGs of one line each.
"""

from __future__ import annotations

import logging

CLIENT_LOGGERS = ("aiormq", "aio_pika")


class ClientNoise(logging.Filter):
    """Caps the broker client's records at WARNING and folds a traceback into the line."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if not any(name == n or name.startswith(n + ".") for n in CLIENT_LOGGERS):
            return True
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


def configure(level: int) -> None:
    """Log at ``level`` and above to standard error, the broker client's records as above."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # aiosqlite's DEBUG lines are every statement with its parameters (a user's data, a
    # token's hash): not even -vv shows them.
    logging.getLogger("aiosqlite").setLevel(max(level, logging.INFO))
    noise = ClientNoise()
    for handler in logging.getLogger().handlers:
        if noise not in handler.filters:
            handler.addFilter(noise)
