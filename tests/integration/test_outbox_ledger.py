"""The ledger stores what the broker could not take, byte for byte, and leases it safely."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event

from fixtures.outbox import seed_rows
from helpers import message
from rabbitry.amqp.fieldtable import Int64
from rabbitry.config import RegistryEntry
from rabbitry.errors import StorageError
from rabbitry.messaging.envelope import Message, encode_headers
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.filters import Failure, Origin, RequeueFilter
from rabbitry.outbox.registry import sync
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

ROUTE = Route("ns.modules", "shipping.registered", queue="shipping_registered_publisher")
LEASE = dt.timedelta(seconds=60)


async def test_store_keeps_body_headers_and_id(db: Database) -> None:
    raw = b'{ "id" : 7,  "name":"\xc3\xb1and\xc3\xba", "f": 1.50 }'  # odd spacing kept as is
    original = Message(
        type="shipping.registered",
        payload=None,
        raw_body=raw,
        headers={"trace": ("a",)},
        tenant="acme",
        extra={"x-custom": Int64(9), "x-bin": b"\xff\x00"},
    )
    ledger = Outbox(db)
    await ledger.store([(ROUTE, original, "cannot connect to the broker")])
    (row,) = await ledger.rows(RequeueFilter())
    assert row.queue == "shipping_registered_publisher"
    assert (row.exchange, row.routing_key) == ("ns.modules", "shipping.registered")
    assert row.message_id == original.id
    assert row.processed is False and row.attempts == 0
    assert row.origin == Origin.CONTINGENCY
    assert row.last_error == "cannot connect to the broker"
    assert row.body.encode() == raw
    rebuilt = row.message()
    assert rebuilt.id == original.id
    assert rebuilt.body() == raw
    assert encode_headers(rebuilt) == encode_headers(original)
    assert row.created_at.tzinfo is dt.UTC


async def test_ad_hoc_publish_is_filed_under_exchange_and_key(db: Database) -> None:
    ledger = Outbox(db)
    await ledger.store([(Route("ex", "rk"), message(), "down")])
    (row,) = await ledger.rows(RequeueFilter())
    assert row.queue == "ex/rk"


async def test_ad_hoc_publish_to_a_registry_route_gets_its_name(db: Database) -> None:
    await sync(
        db,
        [
            RegistryEntry(name="notify_vkm", exchange="ex", routing_key="vkm"),
            RegistryEntry(name="twin_a", exchange="ex", routing_key="twin"),
            RegistryEntry(name="twin_b", exchange="ex", routing_key="twin"),
        ],
    )
    ledger = Outbox(db)
    await ledger.store(
        [
            (Route("ex", "vkm"), message(1), "down"),
            (Route("ex", "twin"), message(2), "down"),  # ambiguous: two entries
            (Route("ex", "vkm", queue="explicit"), message(3), "down"),
        ]
    )
    assert [r.queue for r in await ledger.rows(RequeueFilter())] == [
        "notify_vkm",
        "ex/twin",
        "explicit",
    ]


async def test_a_non_utf8_body_is_refused_loudly(db: Database) -> None:
    bad = Message(type="t", payload=None, raw_body=b"\xff\xfe")
    with pytest.raises(StorageError):
        await Outbox(db).store([(ROUTE, bad, "down")])
    assert await Outbox(db).count(RequeueFilter()) == 0


async def test_database_down_raises_storage_error() -> None:
    dead = Database("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(StorageError):
            await Outbox(dead).store([(ROUTE, message(), "down")])
    finally:
        await dead.close()


async def test_claims_never_overlap(db: Database) -> None:
    await seed_rows(db, [(ROUTE, message(n), "down") for n in range(300)])
    first, second = Outbox(db), Outbox(db)
    cursor = await first.start(RequeueFilter())
    assert cursor is not None
    a, b = await asyncio.gather(
        first.claim(RequeueFilter(), cursor, token="a", limit=200, lease=LEASE),
        second.claim(RequeueFilter(), cursor, token="b", limit=200, lease=LEASE),
    )
    ids_a, ids_b = {r.id for r in a}, {r.id for r in b}
    assert not ids_a & ids_b
    assert len(ids_a | ids_b) == 300
    # Oldest first within a claim.
    assert [r.id for r in a] == sorted(ids_a)


async def test_settle_marks_published_and_failed(db: Database) -> None:
    ids = await seed_rows(db, [(ROUTE, message(n), "down") for n in range(3)])
    ledger = Outbox(db)
    cursor = await ledger.start(RequeueFilter())
    assert cursor is not None
    rows = await ledger.claim(RequeueFilter(), cursor, token="t", limit=10, lease=LEASE)
    await ledger.settle("t", published=[ids[0]], failed=[(ids[1], 0, "down", Failure.UNAVAILABLE)])
    await ledger.release("t", ids)
    done, failed, untouched = [await ledger.get(i) for i in ids]
    assert len(rows) == 3
    assert done is not None and done.processed and done.processed_at is not None
    assert failed is not None and not failed.processed
    assert (failed.attempts, failed.last_error, failed.failure) == (1, "down", "unavailable")
    assert failed.next_attempt_at is not None
    assert untouched is not None and not untouched.processed and untouched.attempts == 0
    assert await ledger.count(RequeueFilter()) == 2
    # The relay leaves the failed row alone for its back-off; a user's run retries it at once.
    cursor = await ledger.start(RequeueFilter())
    assert cursor is not None
    relay = await ledger.claim(
        RequeueFilter(), cursor, token="r", limit=10, lease=LEASE, respect_backoff=True
    )
    assert {r.id for r in relay} == {ids[2]}
    await ledger.release("r", [r.id for r in relay])
    user = await ledger.claim(RequeueFilter(), cursor, token="u", limit=10, lease=LEASE)
    assert {r.id for r in user} == {ids[1], ids[2]}


async def test_expired_lease_is_taken_over(db: Database) -> None:
    await seed_rows(db, [(ROUTE, message(), "down")])
    ledger = Outbox(db)
    cursor = await ledger.start(RequeueFilter())
    assert cursor is not None
    gone = dt.timedelta(seconds=-1)  # a run that crashed long ago
    assert await ledger.claim(RequeueFilter(), cursor, token="dead", limit=1, lease=gone)
    again = await ledger.claim(RequeueFilter(), cursor, token="new", limit=1, lease=LEASE)
    assert len(again) == 1


async def test_filters_by_origin(db: Database) -> None:
    await seed_rows(db, [(ROUTE, message(1), "down")])
    await seed_rows(db, [(ROUTE, message(2), "")], origin=Origin.MANUAL)
    ledger = Outbox(db)
    assert await ledger.count(RequeueFilter(origin=Origin.MANUAL)) == 1
    assert await ledger.count(RequeueFilter(origin=Origin.CONTINGENCY)) == 1
    assert await ledger.count(RequeueFilter()) == 2


async def test_requeue_query_uses_the_pending_index(db: Database) -> None:
    """The plan of the ledger's own claim statement (captured as it runs, with what it sets in
    its transaction) reads the partial index, not the whole table."""
    await seed_rows(db, [(ROUTE, message(n), "down") for n in range(50)])
    ledger = Outbox(db)
    cursor = await ledger.start(RequeueFilter())
    assert cursor is not None
    ran: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        ran.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        claimed = await ledger.claim(
            RequeueFilter(), cursor, token="plan", limit=10, lease=dt.timedelta(seconds=30)
        )
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", capture)
    assert len(claimed) == 10
    (claim_at,) = [i for i, (sql, _) in enumerate(ran) if sql.lstrip().upper().startswith("UPDATE")]
    explain = "EXPLAIN QUERY PLAN " if db.is_sqlite else "EXPLAIN "
    async with db.engine.begin() as conn:
        for sql, parameters in ran[:claim_at]:  # what the claim set first (PostgreSQL's SET)
            if not sql.lstrip().upper().startswith(("BEGIN", "SELECT")):
                await conn.exec_driver_sql(sql, parameters)
        sql, parameters = ran[claim_at]
        plan = await conn.exec_driver_sql(explain + sql, parameters)
        lines = " ".join(str(r[-1]) for r in plan)
    assert "ix_outbox_messages_pending" in lines, lines
