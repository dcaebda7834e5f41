"""What a process says about itself on ``/livez`` and ``/readyz``.

* live: the process is running its services. A service that crashed stops the others, so the
  process is no longer live: it answers 503 until it has drained and exited (non-zero), and an
  orchestrator restarts it instead of routing to a zombie that says ``ok``.
* ready: live, not stopping, every broker link consuming (each service that reports one) and
  the database answering within a bound. A broker or database outage makes a process not
  ready without killing it: it reconnects by itself, and is ready again when it has.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import text

from rabbitry.errors import RabbitryError
from rabbitry.messaging.service import Service
from rabbitry.storage import Database

log = logging.getLogger(__name__)

# A readiness probe must answer within its own timeout (Kubernetes' default is 1 s) even when
# the database hangs instead of refusing.
DATABASE_TIMEOUT = 0.8


class Health:
    """The liveness and readiness of one process running ``services``."""

    def __init__(self, services: Sequence[Service], stopping: asyncio.Event) -> None:
        self._services = list(services)
        self._stopping = stopping
        self.crashed: str | None = None
        self._reports: dict[str, Callable[[], str]] = {}

    def report(self, name: str, state: Callable[[], str]) -> None:
        """Count ``name`` in ``/readyz``: ``state()`` says ``consuming`` (ready), or
        ``connecting`` / ``draining`` (not ready). A part's lifespan resource that holds a broker
        link of its own (the chat gateway's queue) reports it here."""
        self._reports[name] = state

    def watch(self, runner: asyncio.Task[None], on_crash: Callable[[], None]) -> None:
        """Follow the task running the services: when it fails, record why and call
        ``on_crash`` (which stops the process)."""

        def done(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                return
            if (exc := task.exception()) is not None:
                self.crashed = str(exc) or repr(exc)
                on_crash()

        runner.add_done_callback(done)

    def live(self) -> tuple[bool, dict[str, Any]]:
        """(live?, the body of ``/livez``)."""
        if self.crashed is not None:
            return False, {"status": "crashed", "error": self.crashed}
        if self._stopping.is_set():
            return False, {"status": "stopping"}
        return True, {"status": "live", "services": [s.name for s in self._services]}

    async def ready(self, database: Database | None) -> tuple[bool, dict[str, Any]]:
        """(ready?, the body of ``/readyz``)."""
        live, body = self.live()
        if not live:
            return False, body
        links = {s.name: _link(s) for s in self._services}
        links.update((name, state()) for name, state in self._reports.items())
        db = await _database(database)
        ready = db == "ok" and all(state in _READY for state in links.values())
        return ready, {
            "status": "ready" if ready else "not ready",
            "database": db,
            "services": links,
        }


_READY = frozenset({"consuming", "running"})


def _link(service: Service) -> str:
    """``consuming``, ``connecting``, or ``running`` for a service without a broker link.

    A service reports its link as a ``consuming`` flag (the processes of the parts), or as a
    ``connected`` event (a library :class:`~rabbitry.messaging.worker.Worker`)."""
    consuming = getattr(service, "consuming", None)
    if consuming is None:
        connected = getattr(service, "connected", None)
        if not isinstance(connected, asyncio.Event):
            return "running"
        consuming = connected.is_set()
    return "consuming" if consuming else "connecting"


async def _database(database: Database | None) -> str:
    if database is None:
        return "not opened"
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT):
            async with database.session() as session:
                await session.execute(text("select 1"))
    except TimeoutError:
        return f"no answer within {DATABASE_TIMEOUT} s"
    except RabbitryError as exc:
        # The route is public: the driver's text (host names, users, SQL) goes to the log.
        log.warning("readyz: the database does not answer: %s", exc)
        return "unavailable"
    return "ok"
