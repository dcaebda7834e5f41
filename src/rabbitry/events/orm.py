"""Change events from SQLAlchemy, emitted after commit for mapped classes.

.. code-block:: python

    tracker = ChangeTracker(Emitter(publisher, settings))
    sessions = async_sessionmaker(engine, sync_session_class=tracker.session_class)
    with acting_as(user_id):
        async with sessions.begin() as session:
            session.add(Order(total=10))            # insert: every loaded column attribute
            order.total = 12                        # update: only the attributes that changed
            await session.execute(update(Order).where(Order.total > 100).values(flag=True))
    await tracker.flush()                           # optional: wait until they are published

Events of one transaction are collected as it flushes and handed to the emitter only after the
outermost commit; a rollback (of the transaction, or of a savepoint for what happened inside it)
discards them. Bulk ``update()``/``delete()`` statements, which ORM audit hooks usually miss,
are covered through ``do_orm_execute``: the affected rows are read in the same transaction just
before the statement runs (and, for an update, again just after it, to report what changed).

Publishing happens on the running event loop right after commit; :meth:`ChangeTracker.flush`
waits for it (and publishes anything still pending). If a publish fails and the publisher has no
fallback, the events stay queued and the next flush tries again. A crash between commit and
publish loses the queued events: the emitter's publisher persists them to the outbox only once
it has been called.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import decimal
import enum
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import event, select
from sqlalchemy import inspect as orm_inspect
from sqlalchemy.engine import Result
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.session import SessionTransaction

from rabbitry.errors import ConfigError, RabbitryError
from rabbitry.events.change import ChangeEvent, ChangeType, Json
from rabbitry.events.emitter import Emitter, current_user, entity_name
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import PublishResult, Route
from rabbitry.storage.base import Base as RabbitryBase

log = logging.getLogger(__name__)

_PENDING = "rabbitry.events.pending"
_IN_CHUNKS = 500
MAX_BACKOFF = 30.0

# A change and the savepoints open when it was made: rolling one of them back discards it.
Tagged = tuple[ChangeEvent, tuple[SessionTransaction, ...]]


class ChangeTracker:
    """Turns committed ORM changes into change events.

    ``entities``: the mapped classes to track (and their subclasses); by default every mapped
    class with a single integer primary key, except Rabbitry's own tables.
    ``auto_publish``: publish on the running loop right after commit (else only on
    :meth:`flush`).
    """

    def __init__(
        self,
        emitter: Emitter,
        *,
        entities: Iterable[type] | None = None,
        auto_publish: bool = True,
    ) -> None:
        self._emitter = emitter
        self._entities = None if entities is None else tuple(entities)
        self._auto = auto_publish
        # Built into messages at commit, so that a retried publish repeats the same message ids
        # (and commit time stays the event's time).
        self._queue: list[tuple[Message, Route]] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._session_class: type[Session] | None = None
        self._known: dict[type, bool] = {}
        if self._entities is not None:
            for cls in self._entities:
                if _integer_pk(orm_inspect(cls)) is None:
                    raise ConfigError(
                        f"{entity_name(cls)}: change events need a single integer primary key"
                    )

    @property
    def session_class(self) -> type[Session]:
        """A ``Session`` subclass with the tracker installed, for
        ``async_sessionmaker(engine, sync_session_class=tracker.session_class)``."""
        if self._session_class is None:
            self._session_class = type("TrackedSession", (Session,), {})
            self.install(self._session_class)
        return self._session_class

    def install(self, target: Any) -> None:
        """Listen on a ``Session`` subclass, a ``sessionmaker`` or one session (sync or async)."""
        target = getattr(target, "sync_session", target)
        event.listen(target, "after_flush", self._after_flush)
        event.listen(target, "do_orm_execute", self._on_execute)
        event.listen(target, "after_soft_rollback", self._after_rollback)
        event.listen(target, "after_commit", self._after_commit)

    @property
    def pending(self) -> int:
        """Committed change events not yet handed to the publisher."""
        return len(self._queue)

    async def flush(self) -> list[PublishResult]:
        """Publish every committed, unpublished change event, in commit order."""
        async with self._lock:
            batch = list(self._queue)
            if not batch:
                return []
            results = await self._emitter.send(batch)
            # Only now are they the publisher's (published, or persisted by its fallback).
            del self._queue[: len(batch)]
            return results

    async def aclose(self) -> None:
        """Stop background publishing and publish what is left (raises if that fails)."""
        self._closed = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task  # not cancelled: a publish in flight must finish, not be repeated
        await self.flush()

    # -- session hooks (sync; for an AsyncSession they run on the loop, in its greenlet) ----

    def _tracked(self, cls: type) -> bool:
        known = self._known.get(cls)
        if known is None:
            if self._entities is not None:
                known = issubclass(cls, self._entities)
            else:
                mapper: Mapper[Any] = orm_inspect(cls)
                known = not issubclass(cls, RabbitryBase) and _integer_pk(mapper) is not None
            self._known[cls] = known
        return known

    def _record(self, session: Session, changes: Iterable[ChangeEvent]) -> None:
        savepoints: list[SessionTransaction] = []
        transaction = session.get_nested_transaction()
        while transaction is not None:
            if transaction.nested:
                savepoints.append(transaction)
            transaction = transaction.parent
        tags = tuple(savepoints)
        session.info.setdefault(_PENDING, []).extend((c, tags) for c in changes)

    def _after_flush(self, session: Session, _context: UOWTransaction) -> None:
        user = current_user()
        changes: list[ChangeEvent] = []
        for obj in session.new:
            if self._tracked(type(obj)):
                state = orm_inspect(obj)
                data = {
                    prop.key: _jsonable(state.dict[prop.key])
                    for prop in state.mapper.column_attrs
                    if prop.key in state.dict
                }
                changes.append(_change(ChangeType.INSERT, obj, user, data))
        for obj in session.dirty:
            if self._tracked(type(obj)):
                state = orm_inspect(obj)
                data = {}
                for prop in state.mapper.column_attrs:
                    history = state.attrs[prop.key].history
                    if history.has_changes():
                        data[prop.key] = _jsonable(history.added[0] if history.added else None)
                if data:
                    changes.append(_change(ChangeType.UPDATE, obj, user, data))
        for obj in session.deleted:
            if self._tracked(type(obj)):
                changes.append(_change(ChangeType.DELETE, obj, user, None))
        if changes:
            self._record(session, changes)

    def _on_execute(self, state: ORMExecuteState) -> Result[Any] | None:
        if not (state.is_update or state.is_delete):
            return None
        mapper = state.bind_mapper
        if mapper is None or not self._tracked(mapper.class_):
            return None
        pk = _integer_pk(mapper)
        assert pk is not None
        session, user, entity = state.session, current_user(), entity_name(mapper.class_)
        columns = {prop.key: prop.columns[0] for prop in mapper.column_attrs}
        params = state.parameters
        if isinstance(params, Sequence) and not isinstance(params, Mapping):
            # ORM bulk UPDATE by primary key: one parameter set per row, keyed by attribute.
            ids = [p[pk] for p in params if isinstance(p.get(pk), int)]
            where = None
        else:
            where = state.statement.whereclause  # type: ignore[attr-defined]
            query = select(columns[pk])
            if where is not None:
                query = query.where(where)
            ids = list(session.execute(query, params or {}).scalars())
        before = _rows(session, columns, pk, ids) if state.is_update else {}
        result = state.invoke_statement()
        changes: list[ChangeEvent] = []
        if state.is_delete:
            changes = [ChangeEvent(ChangeType.DELETE, entity, i, user) for i in ids]
        else:
            after = _rows(session, columns, pk, ids)
            for entity_id, new in after.items():
                old = before.get(entity_id, {})
                data = {k: _jsonable(v) for k, v in new.items() if old.get(k) != v}
                if data:
                    changes.append(ChangeEvent(ChangeType.UPDATE, entity, entity_id, user, data))
        if changes:
            self._record(session, changes)
        return result

    def _after_rollback(self, session: Session, previous: SessionTransaction) -> None:
        pending: list[Tagged] | None = session.info.get(_PENDING)
        if not pending:
            return
        if previous.parent is None:
            session.info.pop(_PENDING, None)
        elif previous.nested:
            session.info[_PENDING] = [(c, tags) for c, tags in pending if previous not in tags]

    def _after_commit(self, session: Session) -> None:
        pending: list[Tagged] = session.info.pop(_PENDING, [])
        if not pending:
            return
        self._queue.extend(self._emitter.message(change) for change, _ in pending)
        if not self._auto or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # a plain sync Session outside any loop: await flush() later
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._publish_in_background())

    async def _publish_in_background(self) -> None:
        delay = 0.5
        while self._queue and not self._closed:
            try:
                await self.flush()
            except RabbitryError as exc:
                log.error("change events not published yet (%d pending): %s", self.pending, exc)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                delay = min(delay * 2, MAX_BACKOFF)


def _integer_pk(mapper: Mapper[Any]) -> str | None:
    """The attribute key of a single integer primary key, else None."""
    if len(mapper.primary_key) != 1:
        return None
    column = mapper.primary_key[0]
    try:
        if not issubclass(column.type.python_type, int):
            return None
    except NotImplementedError:
        return None
    prop = mapper.get_property_by_column(column)
    return prop.key


def _change(kind: ChangeType, obj: object, user: Any, data: dict[str, Json] | None) -> ChangeEvent:
    mapper = orm_inspect(obj).mapper
    key = _integer_pk(mapper)
    assert key is not None
    return ChangeEvent(kind, entity_name(type(obj)), getattr(obj, key), user, data)


def _rows(
    session: Session, columns: Mapping[str, Any], pk: str, ids: Sequence[int]
) -> dict[int, dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    keys = list(columns)
    for start in range(0, len(ids), _IN_CHUNKS):
        chunk = ids[start : start + _IN_CHUNKS]
        query = select(*columns.values()).where(columns[pk].in_(chunk))
        for row in session.execute(query):
            values = dict(zip(keys, row, strict=True))
            rows[values[pk]] = values
    return rows


def _jsonable(value: Any) -> Json:
    """Column values as JSON: dates in ISO 8601, decimals and UUIDs as strings, bytes base64."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    return str(value)
