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

Events of one transaction are collected as it flushes and published only after the outermost
commit; a rollback (of the transaction, or of a savepoint for what happened inside it)
discards them. Bulk ``update()``/``delete()`` statements, which ORM audit hooks usually miss,
are covered through ``do_orm_execute``: the affected rows are read in the same transaction just
before the statement runs (and, for an update, again just after it, to report what changed).

How committed events reach the broker is the tracker's delivery strategy's business
(:mod:`rabbitry.events.delivery`), given to it: with ``delivery=OutboxDelivery(outbox,
publisher)`` each flush on the outbox's database also writes its events as outbox rows in the
session's own transaction, so a crash after COMMIT loses nothing: rows not confirmed are sent by
the outbox relay. On any other database, and by default (``MemoryDelivery``), the events wait in
memory from commit until they are published, and a crash in between loses them.

Publishing happens on the running event loop right after commit; :meth:`ChangeTracker.flush`
waits for it (and publishes anything still pending).
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
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, event, select
from sqlalchemy import inspect as orm_inspect
from sqlalchemy.engine import Result
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, UOWTransaction
from sqlalchemy.orm.session import SessionTransaction

from rabbitry.errors import ConfigError, RabbitryError
from rabbitry.events.change import ChangeEvent, ChangeType, Json
from rabbitry.events.delivery import DeliveryMode, DeliveryStrategy, MemoryDelivery, Staged
from rabbitry.events.emitter import Emitter, current_user, entity_name
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import PublishResult, Route
from rabbitry.storage.base import Base as RabbitryBase

log = logging.getLogger(__name__)

_PENDING = "rabbitry.events.pending"  # memory delivery: changes of the open transaction
_STAGED = "rabbitry.events.staged"  # outbox delivery: rows written in the open transaction
_IN_CHUNKS = 500
MAX_BACKOFF = 30.0

# A change (or its outbox row) and the savepoints open when it was made (written): rolling one
# of them back discards it.
Savepoints = tuple[SessionTransaction, ...]
Tagged = tuple[ChangeEvent, Savepoints]


class ChangeTracker:
    """Turns committed ORM changes into change events.

    ``entities``: the mapped classes to track (and their subclasses); by default every mapped
    class with a single integer primary key, except Rabbitry's own tables.
    ``auto_publish``: publish on the running loop right after commit (else only on
    :meth:`flush`).
    ``delivery``: how committed events reach the broker: an
    :class:`~rabbitry.events.delivery.OutboxDelivery` writes them as outbox rows in the
    session's own transaction (on the outbox's database); the default,
    :class:`~rabbitry.events.delivery.MemoryDelivery`, holds them in memory until published.
    """

    def __init__(
        self,
        emitter: Emitter,
        *,
        entities: Iterable[type] | None = None,
        auto_publish: bool = True,
        delivery: DeliveryStrategy | None = None,
    ) -> None:
        self._emitter = emitter
        self._entities = None if entities is None else tuple(entities)
        self._auto = auto_publish
        self._delivery: DeliveryStrategy = delivery or MemoryDelivery()
        # Memory delivery: built into messages at commit, so that a retried publish repeats
        # the same message ids (and commit time stays the event's time).
        self._queue: list[tuple[Message, Route]] = []
        # Outbox delivery: committed rows not published yet.
        self._staged: list[Staged] = []
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._session_class: type[Session] | None = None
        self._known: dict[type, bool] = {}
        self._modes: weakref.WeakKeyDictionary[Engine, DeliveryMode] = weakref.WeakKeyDictionary()
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

    def delivery_for(self, bind: Any) -> DeliveryMode:
        """How events of a session on ``bind`` (an engine, async or not, or a connection) are
        delivered: ``OUTBOX`` or ``MEMORY`` (the strategy's answer, asked once per engine)."""
        engine: Engine = getattr(bind, "sync_engine", None) or bind.engine
        mode = self._modes.get(engine)
        if mode is None:
            mode = self._modes[engine] = self._delivery.mode_for(engine)
            url = engine.url.render_as_string(hide_password=True)
            log.info("change events of %s: %s delivery", url, mode)
        return mode

    @property
    def pending(self) -> int:
        """Committed change events not yet handed to the publisher."""
        return len(self._queue) + len(self._staged)

    async def flush(self) -> list[PublishResult]:
        """Publish every committed, unpublished change event, in commit order.

        Events delivered through the outbox never make this raise: one the broker did not
        confirm is ``PERSISTED`` (its row waits for the relay). Events held in memory raise
        :class:`PublishFailed` if the publisher has no fallback for them, and stay queued.
        """
        async with self._lock:
            results: list[PublishResult] = []
            staged, self._staged = self._staged, []
            if staged:
                # Handed over before publishing: whatever happens now, the rows are in the
                # outbox and the relay takes what is not marked processed.
                results = await self._delivery.publish(staged)
            batch = list(self._queue)
            if not batch:
                return results
            results += await self._emitter.send(batch)
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

    def _record(self, session: Session, changes: Iterable[tuple[type, ChangeEvent]]) -> None:
        savepoints: list[SessionTransaction] = []
        transaction = session.get_nested_transaction()
        while transaction is not None:
            if transaction.nested:
                savepoints.append(transaction)
            transaction = transaction.parent
        tags = tuple(savepoints)
        memory: list[Tagged] = []
        binds: dict[type, Engine | Connection] = {}
        outboxed: dict[Engine | Connection, list[ChangeEvent]] = {}
        for cls, change in changes:
            bind = binds.get(cls)
            if bind is None:
                bind = binds[cls] = session.get_bind(cls)
            if self.delivery_for(bind) is DeliveryMode.OUTBOX:
                outboxed.setdefault(bind, []).append(change)
            else:
                memory.append((change, tags))
        if memory:
            session.info.setdefault(_PENDING, []).extend(memory)
        for bind, group in outboxed.items():
            # The session's own connection: the rows commit or roll back with the changes.
            connection = session.connection(bind_arguments={"bind": bind})
            staged = self._delivery.stage(connection, [self._emitter.message(c) for c in group])
            session.info.setdefault(_STAGED, []).extend((row, tags) for row in staged)

    def _after_flush(self, session: Session, _context: UOWTransaction) -> None:
        user = current_user()
        changes: list[tuple[type, ChangeEvent]] = []
        for obj in session.new:
            if self._tracked(type(obj)):
                state = orm_inspect(obj)
                data = {
                    prop.key: _jsonable(state.dict[prop.key])
                    for prop in state.mapper.column_attrs
                    if prop.key in state.dict
                }
                changes.append((type(obj), _change(ChangeType.INSERT, obj, user, data)))
        for obj in session.dirty:
            if self._tracked(type(obj)):
                state = orm_inspect(obj)
                data = {}
                for prop in state.mapper.column_attrs:
                    history = state.attrs[prop.key].history
                    if history.has_changes():
                        data[prop.key] = _jsonable(history.added[0] if history.added else None)
                if data:
                    changes.append((type(obj), _change(ChangeType.UPDATE, obj, user, data)))
        for obj in session.deleted:
            if self._tracked(type(obj)):
                changes.append((type(obj), _change(ChangeType.DELETE, obj, user, None)))
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
            self._record(session, [(mapper.class_, c) for c in changes])
        return result

    def _after_rollback(self, session: Session, previous: SessionTransaction) -> None:
        # The database already dropped the outbox rows written in what was rolled back.
        for key in (_PENDING, _STAGED):
            entries: list[tuple[Any, Savepoints]] | None = session.info.get(key)
            if not entries:
                continue
            if previous.parent is None:
                session.info.pop(key, None)
            elif previous.nested:
                session.info[key] = [(e, tags) for e, tags in entries if previous not in tags]

    def _after_commit(self, session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint was released: the transaction may still roll back
        pending: list[Tagged] = session.info.pop(_PENDING, [])
        staged: list[tuple[Staged, Savepoints]] = session.info.pop(_STAGED, [])
        if not pending and not staged:
            return
        self._queue.extend(self._emitter.message(change) for change, _ in pending)
        self._staged.extend(row for row, _ in staged)
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
        while (self._queue or self._staged) and not self._closed:
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
