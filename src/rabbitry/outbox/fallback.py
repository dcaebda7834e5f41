"""The outbox as a fallback that opens its database only when a message needs it.

A one-shot publish (``rabbitry publish``, a script) usually never needs the database: the
broker takes the message. Opening and migrating the database first would make the broker's
fallback a precondition of every publish, and a database outage would stop publishes the
broker could take. :class:`OnDemandOutbox` opens (and migrates) the database the first time the
publisher hands it a message; if that fails, the error is a :class:`StorageError` like any
other failure to store, which the publisher lets reach the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

from rabbitry.errors import StorageError
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.filters import Origin
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database


class OnDemandOutbox:
    """A :class:`~rabbitry.messaging.publisher.Fallback` over the database at ``url``, opened
    on first use. Use ``async with`` (or :meth:`close`) to dispose of it."""

    def __init__(self, url: str, *, origin: Origin = Origin.CONTINGENCY) -> None:
        self._url = url
        self._origin = origin
        self._db: Database | None = None

    @property
    def opened(self) -> bool:
        """Whether a message needed the database."""
        return self._db is not None

    async def store(self, items: Sequence[tuple[Route, Message, str]]) -> None:
        await Outbox(await self._database(), origin=self._origin).store(items)

    async def _database(self) -> Database:
        if self._db is None:
            try:
                database = Database(self._url)
            except Exception as exc:  # a bad URL, an unwritable SQLite directory
                raise StorageError(f"cannot open the database: {exc}") from exc
            try:
                await database.upgrade()
            except BaseException:
                await database.close()
                raise
            self._db = database
        return self._db

    async def close(self) -> None:
        database, self._db = self._db, None
        if database is not None:
            await database.close()

    async def __aenter__(self) -> OnDemandOutbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
