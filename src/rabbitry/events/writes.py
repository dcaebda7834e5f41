"""Write transactions of the event store: run again on a conflict or a transient failure,
never on a value the database refuses, which is split out of its batch instead.

Failures, from SQLAlchemy or straight from asyncpg (the PostgreSQL append talks to the driver
itself, see :mod:`rabbitry.events.store`), fall in four kinds:

* a **conflict** (a unique constraint, a serialization failure, a deadlock): another writer won
  a race; run the transaction again, it will see the winner's rows;
* **transient** (SQLite busy, a dropped connection, a terminated backend, the server starting
  or shutting down): run it again a few times, backing off. Handing the batch to the broker's
  retry queue instead would let later events of the same entity overtake it;
* **refused** (SQLSTATE class 22 "data exception" or 54 "program limit exceeded", text the
  driver cannot encode): :class:`Refused`, never retried; :func:`split_refused` finds the
  offending items;
* anything else: :class:`~rabbitry.errors.StorageError` at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    OperationalError,
    StatementError,
)
from sqlalchemy.ext.asyncio import AsyncSession

from rabbitry.errors import MessageError, StorageError
from rabbitry.storage.database import Database, driver_message

T = TypeVar("T")
R = TypeVar("R")

TRANSIENT_ATTEMPTS = 5
_CONFLICT_STATES = frozenset({"23505", "40001", "40P01"})
# Connection exceptions, operator intervention (pg_terminate_backend, shutdown), resources.
_TRANSIENT_CLASSES = frozenset({"08", "57", "53"})
_REFUSED_CLASSES = frozenset({"22", "54"})


class Refused(StorageError):
    """The database refused a value of the batch (not a failure of the database: retrying the
    same batch fails the same way)."""


async def with_retry(attempts: int, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work`` (one whole transaction), again after a conflict or a transient failure.

    Raises :class:`Refused` for a refused value and :class:`StorageError` for the rest.
    """
    transient = 0
    for attempt in range(1, attempts + 1):
        try:
            return await work()
        except Refused:
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind == "refused":
                raise Refused(driver_message(exc)) from exc
            if kind == "conflict":
                if attempt == attempts:
                    raise StorageError(
                        f"still conflicting after {attempts} attempts: {driver_message(exc)}"
                    ) from exc
                # Jitter, so that two workers that collided do not collide again in lockstep.
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))
                continue
            if kind == "transient":
                transient += 1
                if transient < TRANSIENT_ATTEMPTS and attempt < attempts:
                    await asyncio.sleep(0.05 * 2**transient)
                    continue
            reason = driver_message(exc)
            raise StorageError(f"database error: {type(exc).__name__}: {reason}") from exc
    raise AssertionError("unreachable")


def classify(exc: BaseException) -> str:
    """``conflict``, ``transient``, ``refused`` or ``fatal``."""
    if isinstance(exc, UnicodeError):
        return "refused"  # a driver that could not encode a text value
    if isinstance(exc, StatementError) and not isinstance(exc, DBAPIError):
        # A bind parameter that could not be converted.
        return "refused" if isinstance(exc.orig, UnicodeError | ValueError) else "fatal"
    state = str(_sqlstate(exc) or "")
    if isinstance(exc, IntegrityError) or state in _CONFLICT_STATES:
        return "conflict"
    if isinstance(exc, DataError) or state[:2] in _REFUSED_CLASSES:
        return "refused"
    if isinstance(exc, OperationalError | OSError | TimeoutError) or state[:2] in (
        _TRANSIENT_CLASSES
    ):
        return "transient"
    if _is_driver_interface_error(exc):
        return "transient"  # asyncpg: the connection is gone (InterfaceError and friends)
    return "fatal"


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None), exc.__cause__):
        state = getattr(candidate, "sqlstate", None)
        if state:
            return str(state)
    return None


def _is_driver_interface_error(exc: BaseException) -> bool:
    # Checked by name, so that this module does not need asyncpg (SQLite-only installs).
    return any(
        cls.__module__.startswith("asyncpg") and cls.__name__ == "InterfaceError"
        for cls in type(exc).__mro__
    )


async def split_refused(
    items: Sequence[T], store: Callable[[Sequence[T]], Awaitable[Sequence[R]]]
) -> list[R | MessageError]:
    """``store(items)``, one result per item; when the database refuses the batch, store each
    half on its own (left first, so arrival order holds), down to the single items it refuses,
    whose result is a :class:`MessageError` with the database's reason.

    A batch with one bad item costs about ``2 * log2(len(items))`` extra transactions. Any
    other :class:`StorageError` (the database is down, a conflict that persists) propagates.
    """
    try:
        return list(await store(items))
    except Refused as exc:
        if len(items) == 1:
            return [MessageError(f"the database refused it: {exc}")]
    middle = len(items) // 2
    left = await split_refused(items[:middle], store)
    return left + await split_refused(items[middle:], store)


_BEGIN_IMMEDIATE = text("BEGIN IMMEDIATE")


async def in_session(database: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """``work`` in one ORM session's transaction."""
    async with database.sessions.begin() as session:
        if database.is_sqlite:
            # Take the write lock up front: a read transaction that later writes gets
            # SQLITE_BUSY at once, without the busy timeout, if another wrote meanwhile.
            await session.execute(_BEGIN_IMMEDIATE)
        return await work(session)
