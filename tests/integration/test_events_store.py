"""The event store on SQLite and PostgreSQL: versions, dedup, concurrency, history, state."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import Awaitable, Callable

from rabbitry.events.change import ChangeEvent, ChangeType
from rabbitry.events.incoming import Row, parse_row
from rabbitry.events.message_log import MessageLog
from rabbitry.events.store import EventStore, Incoming
from rabbitry.messaging.envelope import Message
from rabbitry.storage.database import Database

T0 = dt.datetime(2025, 2, 6, 12, 0, tzinfo=dt.UTC)


def incoming(
    kind: str,
    entity: str,
    entity_id: int,
    data: dict[str, object] | None = None,
    *,
    at: dt.datetime = T0,
    message_id: str | None = None,
    user: int | str = 1,
) -> Incoming:
    return Incoming(
        ChangeEvent(ChangeType(kind), entity, entity_id, user, data),
        message_id or str(uuid.uuid4()),
        at,
    )


async def test_versions_count_from_one_per_entity_and_id(events_db: Database) -> None:
    store = EventStore(events_db)
    results = await store.append(
        [
            incoming("insert", "App\\Models\\Order", 1, {"total": 10}),
            incoming("insert", "App\\Models\\Order", 2, {"total": 20}),
            incoming("update", "App\\Models\\Order", 1, {"total": 11}),
        ]
    )
    assert [(r.id, r.version) for r in results if r] == [(1, 1), (2, 1), (1, 2)]
    await store.append([incoming("delete", "App\\Models\\Order", 1, user="system")])

    history = await store.history("App\\Models\\Order", 1)
    assert [(e.version, e.type, e.user) for e in history] == [
        (1, "insert", 1),
        (2, "update", 1),
        (3, "delete", "system"),
    ]
    sequences = [e.sequence for e in history]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3
    assert history[0].data == {"total": 10} and history[2].data is None
    assert history[0].occurred_at == T0
    assert history[0].recorded_at.tzinfo is not None


async def test_a_redelivered_message_is_stored_once(events_db: Database) -> None:
    store = EventStore(events_db)
    first = incoming("insert", "orders", 5, {"a": 1}, message_id="m-1")
    assert (await store.append([first]))[0] is not None
    again = await store.append(
        [first, incoming("update", "orders", 5, {"a": 2}, message_id="m-2"), first]
    )
    assert [r is None for r in again] == [True, False, True]
    assert [e.version for e in await store.history("orders", 5)] == [1, 2]


async def test_rows_from_bodies_are_stored_like_models(events_db: Database) -> None:
    # The workflow worker's way (parse_row, append_rows): the same versions, dedupe and values.
    store = EventStore(events_db)
    body = {"entity": "orders", "id": 5, "user": 2, "data": {"a": 1, "s": "é"}}
    first = parse_row("insert", body, "m-1", T0)
    assert await store.append_rows([first, first]) == [None, None]  # a repeat within the batch
    # A batch holding a message stored before: numbered around it, without a gap.
    later = parse_row("delete", {"entity": "orders", "id": 5, "user": "system"}, "m-2", T0)
    other = parse_row("update", {**body, "id": 6, "data": {"b": None}}, "m-3", T0)
    assert await store.append_rows([first, later, other]) == [None, None, None]
    history = await store.history("orders", 5)
    assert [(e.version, e.type, e.user, e.data, e.message_id) for e in history] == [
        (1, "insert", 2, {"a": 1, "s": "é"}, "m-1"),
        (2, "delete", "system", None, "m-2"),
    ]
    assert history[0].occurred_at == T0
    assert [(e.version, e.data) for e in await store.history("orders", 6)] == [(1, {"b": None})]


async def test_a_batch_of_rows_keeps_each_column_of_each_event(events_db: Database) -> None:
    # One call for the batch on PostgreSQL: types, users, data and message ids are sent as one
    # text each, entity names and times as their distinct values; deletes without data, data
    # holding the separator and "-", several events of one entity (their places), two
    # entities, times of several seconds.
    store = EventStore(events_db)
    t1 = T0 + dt.timedelta(seconds=1)
    bodies = [
        ("insert", {"entity": "orders", "id": 1, "user": 3, "data": {"a": "x\x1fy"}}, "o1", T0),
        ("insert", {"entity": "bills", "id": 1, "user": "system", "data": {"b": "-"}}, "o2", t1),
        ("update", {"entity": "orders", "id": 1, "user": -4, "data": {}}, "o3", T0),
        ("delete", {"entity": "orders", "id": 1, "user": "system"}, "o4", t1),
        ("delete", {"entity": "bills", "id": 1, "user": 5, "data": {"c": [1, None]}}, "o5", T0),
    ]
    rows = [parse_row(kind, body, message_id, at) for kind, body, message_id, at in bodies]
    assert await store.append_rows(rows) == [None] * 5
    stored = [*await store.history("orders", 1), *await store.history("bills", 1)]
    assert [
        (e.entity, e.version, e.type, e.user, e.data, e.message_id, e.occurred_at) for e in stored
    ] == [
        ("orders", 1, "insert", 3, {"a": "x\x1fy"}, "o1", T0),
        ("orders", 2, "update", -4, {}, "o3", T0),
        ("orders", 3, "delete", "system", None, "o4", t1),
        ("bills", 1, "insert", "system", {"b": "-"}, "o2", t1),
        ("bills", 2, "delete", 5, {"c": [1, None]}, "o5", T0),
    ]
    # The next batch numbers from the heads this one left; a message id holding the
    # separator goes as an array.
    next_rows = [
        parse_row("update", bodies[0][1], "o6\x1fa", t1),
        parse_row("update", bodies[1][1], "o7", t1),
    ]
    assert await store.append_rows(next_rows) == [None, None]
    history = await store.history("orders", 1)
    assert [(e.version, e.message_id) for e in history][2:] == [(3, "o4"), (4, "o6\x1fa")]
    assert [e.version for e in await store.history("bills", 1)] == [1, 2, 3]


async def test_rows_after_another_writer_stored_the_entity_are_numbered_after_it(
    events_db: Database,
) -> None:
    # On PostgreSQL a store remembers the heads its rows left; another writer's events since
    # make that head stale: the batch numbered from it fails on the version constraint and is
    # written again from the stored head, without a gap.
    worker = EventStore(events_db)

    def row(i: int) -> Row:
        body = {"entity": "orders", "id": 7, "user": 1, "data": {"n": i}}
        return parse_row("update", body, f"r{i}", T0)

    await worker.append_rows([row(1), row(2)])
    await EventStore(events_db).append(
        [incoming("update", "orders", 7, {"n": f"m{i}"}, message_id=f"m{i}") for i in range(3)]
    )
    await worker.append_rows([row(3), row(4)])
    await worker.append_rows([row(5)])  # from the head the retry read
    history = await worker.history("orders", 7)
    assert [(e.version, e.message_id) for e in history] == [
        (1, "r1"),
        (2, "r2"),
        (3, "m0"),
        (4, "m1"),
        (5, "m2"),
        (6, "r3"),
        (7, "r4"),
        (8, "r5"),
    ]


CONCURRENT = 240
ENTITY_OF = [random.randint(1, 3) for _ in range(CONCURRENT)]


async def _four_writers(
    events_db_url: str, write: Callable[[EventStore, list[int]], Awaitable[None]]
) -> None:
    """Four workers, each with its own engine (its own connections), write interleaved events
    of the same three entities (message i: "stock" id ``ENTITY_OF[i]``, data ``{"n": i}``,
    id ``m<i>``), every message delivered twice, to two workers, ten at a time through
    ``write(store, indexes)``; no gap, no duplicate, every message stored."""
    first = Database(events_db_url)
    await first.upgrade()
    databases = [first, *(Database(events_db_url) for _ in range(3))]
    try:

        async def worker(index: int) -> None:
            store = EventStore(databases[index])
            mine = [i for i in range(CONCURRENT) if i % 4 == index or (i + 1) % 4 == index]
            for start in range(0, len(mine), 10):
                await write(store, mine[start : start + 10])

        await asyncio.gather(*(worker(i) for i in range(4)))
        store = EventStore(first)
        stored = []
        for entity_id in (1, 2, 3):
            history = await store.history("stock", entity_id)
            assert [e.version for e in history] == list(range(1, len(history) + 1))
            stored += [e.message_id for e in history]
        assert sorted(stored) == sorted(f"m{i}" for i in range(CONCURRENT))
    finally:
        for db in databases:
            await db.close()


async def test_concurrent_row_writers_never_leave_a_gap_or_a_duplicate(
    events_db_url: str,
) -> None:
    # With the workflow worker's rows: each store's remembered heads go stale as the others
    # write the same entities.
    async def write(store: EventStore, indexes: list[int]) -> None:
        body = {"entity": "stock", "user": 1}
        await store.append_rows(
            [
                parse_row("update", {**body, "id": ENTITY_OF[i], "data": {"n": i}}, f"m{i}", T0)
                for i in indexes
            ]
        )

    await _four_writers(events_db_url, write)


async def test_concurrent_writers_never_leave_a_gap_or_a_duplicate(events_db_url: str) -> None:
    async def write(store: EventStore, indexes: list[int]) -> None:
        await store.append(
            [
                incoming("update", "stock", ENTITY_OF[i], {"n": i}, message_id=f"m{i}")
                for i in indexes
            ]
        )

    await _four_writers(events_db_url, write)


async def test_state_is_the_fold_of_the_history_up_to_a_time(events_db: Database) -> None:
    store = EventStore(events_db)
    minute = dt.timedelta(minutes=1)
    await store.append(
        [
            incoming("insert", "users", 9, {"name": "Ada", "role": "dev"}, at=T0),
            incoming("update", "users", 9, {"role": "lead"}, at=T0 + minute, user=2),
            incoming("delete", "users", 9, at=T0 + 2 * minute, user="system"),
        ]
    )
    before = await store.state("users", 9, at=T0 + dt.timedelta(seconds=30))
    assert before is not None
    assert before.to_json() == {
        "entity": "users",
        "id": 9,
        "version": 1,
        "deleted": False,
        "data": {"name": "Ada", "role": "dev"},
        "updated_at": T0.isoformat(),
        "updated_by": 1,
    }
    middle = await store.state("users", 9, at=T0 + minute)
    assert middle is not None and middle.data["role"] == "lead" and middle.updated_by == 2
    now = await store.state("users", 9)
    assert now is not None and now.deleted and now.version == 3
    assert await store.state("users", 9, at=T0 - minute) is None
    assert await store.state("users", 10) is None
    assert await store.history("users", 10) == []


async def test_the_message_log_keeps_each_message_once(events_db: Database) -> None:
    log = MessageLog(events_db)
    a = Message("customer.created", {"id": 1}, tenant="acme")
    b = Message(
        "invoice.paid",
        {"id": 2},
        headers={"k": ("v",)},
        exchange="ns.modules",
        routing_key="billing.invoice",
    )
    assert await log.append([a, b, a]) == 2
    assert await log.append([a]) == 0
    entries = await log.recent()
    assert [(e.type, e.message_id) for e in entries] == [("invoice.paid", b.id), (a.type, a.id)]
    assert entries[0].headers == {"k": ["v"]} and entries[1].tenant == "acme"
    assert [(e.exchange, e.routing_key) for e in entries] == [
        ("ns.modules", "billing.invoice"),
        ("", ""),  # a message that did not come from the broker
    ]
