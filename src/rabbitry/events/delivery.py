"""How the SQLAlchemy change tracker hands committed change events to the broker.

The tracker is given its strategy (``ChangeTracker(emitter, delivery=...)``); it never guesses
one from the publisher. Two strategies, and per database one :class:`DeliveryMode`:

* :class:`OutboxDelivery` (``OutboxDelivery(Outbox(db), publisher)``), for a session whose
  tables live in the same database as Rabbitry's outbox (any other database gets memory
  delivery, unless ``everywhere=True``): as the session flushes, each change event becomes an
  outbox row (origin ``contingency``, ``processed=false``) written on the session's own
  connection, inside its transaction: the rows commit or roll back with the data they
  describe. After commit they are published with confirms and no fallback, and the confirmed
  rows are marked processed with the outbox's own :meth:`~rabbitry.outbox.store.Outbox.settle`.
  Every row is leased to the tracker from the moment it is written, so the relay leaves it
  alone while the tracker publishes it; a row the broker did not confirm (or that a dead
  process never published) is sent by the relay or ``rabbitry requeue`` once its lease ends.
  A crash after COMMIT loses nothing.
* :class:`MemoryDelivery` (the default, and for a database without the outbox's table):
  messages are built at commit and held in memory until the publisher has them. A crash
  between commit and publish loses them.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from sqlalchemy import URL, Connection, Engine

from rabbitry.errors import ConfigError, RabbitryError, StorageError
from rabbitry.events.emitter import EventPublisher
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import PublishResult, PublishStatus, Route
from rabbitry.outbox import Failure, Outbox
from rabbitry.storage.clock import utcnow

log = logging.getLogger(__name__)

# From the flush that writes a row until the tracker settles it, the relay leaves it alone.
# Longer than a transaction plus a publish (its timeout) should take; a dead process's rows
# wait that long before the relay sends them.
DEFAULT_LEASE = dt.timedelta(seconds=60)

_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}
_LOOPBACK = {"localhost": "127.0.0.1", "::1": "127.0.0.1"}


class DeliveryMode(StrEnum):
    """How a :class:`~rabbitry.events.orm.ChangeTracker` delivers the committed change events
    of one database."""

    OUTBOX = "outbox"
    """Outbox rows written in the application's transaction, published after commit."""
    MEMORY = "memory"
    """Messages held in memory from commit until the publisher has them."""


class DeliveryStrategy(Protocol):
    """What a :class:`~rabbitry.events.orm.ChangeTracker` is given to deliver events with."""

    def mode_for(self, engine: Engine) -> DeliveryMode:
        """The mode for the sessions on ``engine``."""

    def stage(self, connection: Connection, items: Sequence[tuple[Message, Route]]) -> list[Staged]:
        """Write ``items`` on ``connection``, in its transaction (``OUTBOX`` mode only)."""

    async def publish(self, staged: Sequence[Staged]) -> list[PublishResult]:
        """Publish committed rows ``stage`` wrote; never raises for the broker."""


class MemoryDelivery:
    """Every database's events held in memory from commit until the publisher has them."""

    def mode_for(self, engine: Engine) -> DeliveryMode:
        return DeliveryMode.MEMORY

    def stage(self, connection: Connection, items: Sequence[tuple[Message, Route]]) -> list[Staged]:
        raise ConfigError("memory delivery writes no outbox rows")

    async def publish(self, staged: Sequence[Staged]) -> list[PublishResult]:
        if staged:
            raise ConfigError("memory delivery has no outbox rows to publish")
        return []


@dataclass(frozen=True, slots=True)
class Staged:
    """A change event written to the outbox in an application's transaction."""

    row_id: int
    message: Message
    route: Route


class OutboxDelivery:
    """Writes change events as leased outbox rows, then publishes and settles them.

    ``outbox``: the outbox of the application's database; sessions on another database get
    memory delivery, unless ``everywhere`` (then their rows go there, with a warning: that
    database must have the outbox's table). ``lease``: how long the relay leaves a row written
    here alone (the time a dead process's events wait before the relay sends them).
    """

    def __init__(
        self,
        outbox: Outbox,
        publisher: EventPublisher,
        *,
        lease: dt.timedelta = DEFAULT_LEASE,
        everywhere: bool = False,
    ) -> None:
        self.outbox = outbox
        self.everywhere = everywhere
        self._publisher = publisher
        self._lease = lease
        # One lease token per tracker: Outbox.settle only touches rows still leased with it,
        # so a row the relay took over after the lease ended is the relay's to mark.
        self._token = str(uuid.uuid4())

    def stage(self, connection: Connection, items: Sequence[tuple[Message, Route]]) -> list[Staged]:
        """Write ``items`` as outbox rows on ``connection``, in its transaction (sync: this
        runs inside the session's flush)."""
        ids = self.outbox.stage(
            connection,
            [(route, message) for message, route in items],
            token=self._token,
            until=utcnow() + self._lease,
        )
        return [
            Staged(row_id, message, route)
            for row_id, (message, route) in zip(ids, items, strict=True)
        ]

    def mode_for(self, engine: Engine) -> DeliveryMode:
        same = same_database(engine.url, self.outbox.db.engine.url)
        if not same and self.everywhere:
            log.warning(
                "outbox delivery everywhere, on %s, which does not look like the outbox's database",
                engine.url.render_as_string(hide_password=True),
            )
        return DeliveryMode.OUTBOX if same or self.everywhere else DeliveryMode.MEMORY

    async def publish(self, staged: Sequence[Staged]) -> list[PublishResult]:
        """Publish committed rows with confirms and no fallback (the rows are the fallback),
        then mark them: confirmed ones processed, the others pending with their error.

        Never raises for the broker or the database: a row not marked processed stays in the
        outbox and the relay sends it (a message published twice is stored once, by id). A
        result is ``PUBLISHED``, or ``PERSISTED`` with the reason it was not.
        """
        if not staged:
            return []
        items = [(s.message, s.route) for s in staged]
        try:
            results = await self._publisher.publish_many(items, use_fallback=False)
        except RabbitryError as exc:
            results = [PublishResult(m.id, PublishStatus.FAILED, str(exc)) for m, _ in items]
        published = [s.row_id for s, r in zip(staged, results, strict=True) if r.ok]
        failed = [
            (s.row_id, 0, error, Failure.of(error))
            for s, r in zip(staged, results, strict=True)
            if not r.ok
            for error in (r.error or "not confirmed by the broker",)
        ]
        try:
            await self.outbox.settle(self._token, published, failed)
        except StorageError as exc:
            # Still leased: once the lease ends the relay sends them (again, for the
            # published ones; the event store keeps each message id once).
            log.error("change events not marked in the outbox, the relay will: %s", exc)
        if failed:
            log.warning(
                "%d change event(s) wait in the outbox for the relay: %s",
                len(failed),
                failed[0][2],
            )
        return [
            r if r.ok else PublishResult(r.message_id, PublishStatus.PERSISTED, r.error)
            for r in results
        ]


def same_database(a: URL, b: URL) -> bool:
    """Whether two URLs name the same database (drivers and users may differ)."""
    backend = a.get_backend_name()
    if backend != b.get_backend_name():
        return False
    if backend == "sqlite":
        paths = [u.database for u in (a, b)]
        if any(p in (None, "", ":memory:") or str(p).startswith("file:") for p in paths):
            return a.database == b.database and a.database not in (None, "", ":memory:")
        return Path(str(paths[0])).resolve() == Path(str(paths[1])).resolve()
    default = _DEFAULT_PORTS.get(backend)
    return (_host(a), a.port or default, a.database) == (_host(b), b.port or default, b.database)


def _host(url: URL) -> str:
    host = (url.host or "").lower()
    return _LOOPBACK.get(host, host)
