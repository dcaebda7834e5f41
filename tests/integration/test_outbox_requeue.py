"""The requeue command's engine: filters, oldest first, confirm-then-mark, no duplicates."""

from __future__ import annotations

import asyncio
import datetime as dt

import aio_pika
import pytest

from fixtures.outbox import Topic, make_settings, pending_ids, seed_rows, set_created_at
from helpers import AMQP_URL, DEAD_AMQP_URL, drain_ids, message, take_all
from rabbitry.amqp.fieldtable import Int64
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.filters import Origin, RequeueFilter, parse_filter
from rabbitry.outbox.requeue import RequeueOptions, RowOutcome, requeue
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


# Rows of the requeue example in docs/outbox.md: two registry queues, one ad-hoc publish, over
# two days.
SEEDED = {
    "a": ("shipping_registered_publisher", "2024-07-01 10:00:00"),
    "b": ("shipping_registered_publisher", "2024-07-02 10:00:00"),
    "c": ("notify_vkm_publisher", "2024-07-01 12:00:00"),
    "d": (None, "2024-07-01 23:59:59.500000"),  # ad-hoc: filed as "<exchange>/<key>"
    "e": ("notify_vkm_publisher", "2024-06-30 23:59:59"),
}


async def seed(db: Database, topic: Topic) -> dict[str, str]:
    """Seed the rows above; returns label -> message id."""
    labels = list(SEEDED)
    messages = [message(label) for label in labels]
    routes = [topic.route(f"key.{label}", queue=SEEDED[label][0]) for label in labels]
    ids = await seed_rows(db, [(r, m, "down") for r, m in zip(routes, messages, strict=True)])
    await set_created_at(
        db, {row_id: at(SEEDED[label][1]) for row_id, label in zip(ids, labels, strict=True)}
    )
    return {label: m.id for label, m in zip(labels, messages, strict=True)}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("", "", ""), "abcde"),
        (("shipping_registered_publisher",), "ab"),
        (("shipping_registered_publisher", "2024-07-01 00:00:00", "2024-07-01 23:59:59"), "a"),
        (("", "2024-07-01 00:00:00", "2024-07-01 23:59:59"), "acd"),
        (("", "2024-07-01 11:00:00"), "bcd"),
        (("notify_vkm_publisher", "2024-07-01 00:00:00"), "c"),
        (("{exchange}/key.d",), "d"),
        (("nobody",), ""),
    ],
)
async def test_filters_pick_the_right_rows(
    db: Database, topic: Topic, args: tuple[str, ...], expected: str
) -> None:
    ids = await seed(db, topic)
    settings = make_settings(db, topic.namespace)
    where = parse_filter(*(a.format(exchange=topic.exchange) for a in args), tz=UTC)
    async with Publisher(settings.amqp) as publisher:
        report = await requeue(Outbox(db), publisher, where)
    assert (report.published, report.failed) == (len(expected), 0)
    delivered = await drain_ids(topic.queue, idle=0.5)
    # Oldest first.
    by_age = sorted(expected, key=lambda label: SEEDED[label][1])
    assert delivered == [ids[label] for label in by_age]
    assert await pending_ids(db) == {ids[label] for label in SEEDED if label not in expected}


async def test_republished_message_keeps_id_body_and_headers(db: Database, topic: Topic) -> None:
    raw = b'{"id": 7,   "name": "\xc3\xb1and\xc3\xba"}'
    original = Message(
        type="shipping.registered",
        payload=None,
        raw_body=raw,
        headers={"trace": ("a", "b")},
        tenant="acme",
        correlation_id="corr-1",
        extra={"x-custom": Int64(5)},
    )
    await seed_rows(db, [(topic.route(), original, "down")])
    settings = make_settings(db, topic.namespace)
    async with Publisher(settings.amqp) as publisher:
        report = await requeue(Outbox(db), publisher, RequeueFilter())
    assert report.published == 1
    (delivered,) = await take_all(topic.queue)
    assert delivered.body == raw
    assert delivered.message_id == original.id
    headers = delivered.headers
    assert headers["rr_id"] == original.id
    assert headers["rr_job"] == "shipping.registered"
    assert headers["x-tenant"] == "acme"
    assert headers["x-custom"] == 5
    assert delivered.correlation_id == "corr-1"


async def test_a_failed_row_stays_pending_and_does_not_stop_the_others(
    db: Database, topic: Topic
) -> None:
    unbound = f"{topic.namespace}.unbound"
    connection = await aio_pika.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        await channel.declare_exchange(unbound, aio_pika.ExchangeType.DIRECT)
        good = [message(f"ok{n}") for n in range(5)]
        lost = message("lost")
        await seed_rows(db, [(topic.route(), good[0], "down"), (Route(unbound, "x"), lost, "down")])
        await seed_rows(db, [(topic.route(), m, "down") for m in good[1:]])
        seen: list[RowOutcome] = []
        settings = make_settings(db, topic.namespace)
        async with Publisher(settings.amqp) as publisher:
            report = await requeue(
                Outbox(db),
                publisher,
                RequeueFilter(),
                options=RequeueOptions(batch_size=2),
                progress=seen.extend,
            )
        await channel.exchange_delete(unbound)
    finally:
        await connection.close()
    assert (report.published, report.failed) == (5, 1)
    assert not report.ok
    assert [o.row.message_id for o in seen if not o.published] == [lost.id]
    assert len(seen) == 6
    assert set(await drain_ids(topic.queue, idle=0.5)) == {m.id for m in good}
    (row,) = await Outbox(db).rows(RequeueFilter())
    assert row.message_id == lost.id
    assert row.attempts == 1
    assert row.last_error is not None and "unroutable" in row.last_error


async def test_broker_down_leaves_every_row_pending(db: Database, outbox_ns: str) -> None:
    await seed_rows(db, [(Route("ex", "rk"), message(str(n)), "down") for n in range(3)])
    settings = make_settings(db, outbox_ns, amqp_url=DEAD_AMQP_URL)
    async with Publisher(settings.amqp) as publisher:
        report = await requeue(Outbox(db), publisher, RequeueFilter())
    assert (report.published, report.failed) == (0, 3)
    rows = await Outbox(db).rows(RequeueFilter())
    assert [r.attempts for r in rows] == [1, 1, 1]
    assert all(r.last_error and "connect" in r.last_error for r in rows)


async def test_streams_in_batches(db: Database, topic: Topic) -> None:
    await seed_rows(db, [(topic.route(), message(str(n)), "down") for n in range(250)])
    batches: list[int] = []
    settings = make_settings(db, topic.namespace)
    async with Publisher(settings.amqp) as publisher:
        report = await requeue(
            Outbox(db),
            publisher,
            RequeueFilter(),
            options=RequeueOptions(batch_size=100),
            progress=lambda outcomes: batches.append(len(outcomes)),
        )
    assert report.published == 250
    assert batches == [100, 100, 50]
    assert await Outbox(db).count(RequeueFilter()) == 0


async def test_manual_rows_can_be_selected_by_origin(db: Database, topic: Topic) -> None:
    manual = message("manual")
    await seed_rows(db, [(topic.route(), manual, "")], origin=Origin.MANUAL)
    await seed_rows(db, [(topic.route(), message("contingency"), "down")])
    settings = make_settings(db, topic.namespace)
    async with Publisher(settings.amqp) as publisher:
        report = await requeue(Outbox(db), publisher, RequeueFilter(origin=Origin.MANUAL))
    assert report.published == 1
    assert await drain_ids(topic.queue, idle=0.5) == [manual.id]


async def test_two_concurrent_runs_never_publish_a_row_twice(db: Database, topic: Topic) -> None:
    total = 3000
    sent = [message(str(n)) for n in range(total)]
    await seed_rows(db, [(topic.route(), m, "down") for m in sent])
    settings = make_settings(db, topic.namespace)

    async def one_run(name: str) -> int:
        # Each run has its own engine and connection, like two processes.
        async with Database(db.url) as own_db, Publisher(settings.amqp, name=name) as publisher:
            report = await requeue(
                Outbox(own_db), publisher, RequeueFilter(), options=RequeueOptions(batch_size=100)
            )
        assert report.failed == 0
        return report.published

    first, second = await asyncio.gather(one_run("run-a"), one_run("run-b"))
    delivered = await drain_ids(topic.queue)
    assert len(delivered) == total, f"{len(delivered) - total} duplicate(s)"
    assert set(delivered) == {m.id for m in sent}
    assert first + second == total
    assert first > 0 and second > 0, f"one run did everything ({first}/{second})"
    assert await Outbox(db).count(RequeueFilter()) == 0


async def test_a_row_for_a_deleted_exchange_fails_alone(db: Database, topic: Topic) -> None:
    good = [message(f"ok{n}") for n in range(4)]
    ghost = message("ghost")
    rows = [(topic.route(), m, "down") for m in good[:2]]
    rows.append((Route(f"{topic.namespace}.deleted", "k"), ghost, "down"))
    rows += [(topic.route(), m, "down") for m in good[2:]]
    await seed_rows(db, rows)
    settings = make_settings(db, topic.namespace)
    check = ExchangeCheck(settings)
    try:
        async with Publisher(settings.amqp) as publisher:
            report = await requeue(Outbox(db), publisher, RequeueFilter(), exchanges=check)
    finally:
        await check.close()
    assert (report.published, report.failed) == (4, 1)
    assert set(await drain_ids(topic.queue, idle=0.5)) == {m.id for m in good}
    (row,) = await Outbox(db).rows(RequeueFilter())
    assert row.message_id == ghost.id
    assert row.last_error == f"exchange '{topic.namespace}.deleted' does not exist"
    # Stored as an outage ("down"), failed as a refusal: the relay now backs off for longer.
    assert (row.failure, row.refused) == ("refused", True)
