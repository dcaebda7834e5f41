"""Browsing the ledger (the back-office's "Messages to enqueue", `rabbitry outbox list`):
keyset pages, filters, soft delete, requeue of selected rows; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from fixtures.outbox import Topic, make_settings, seed_rows, set_created_at
from helpers import take_all
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher
from rabbitry.outbox.filters import RequeueFilter, parse_filter
from rabbitry.outbox.message import OutboxQuery, PageKey, State
from rabbitry.outbox.requeue import requeue_messages, selected
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

UTC = dt.UTC
START = dt.datetime(2024, 7, 1, 10, 0, tzinfo=UTC)


async def seed(db: Database, topic: Topic, count: int, *, queue: str = "orders") -> list[int]:
    rows = [
        (topic.route("k", queue=queue), Message(type="order.placed", payload={"n": n}), "down")
        for n in range(count)
    ]
    ids = await seed_rows(db, rows)
    # Two rows per second, so that ties on created_at are broken by id.
    await set_created_at(
        db, {row_id: START + dt.timedelta(seconds=i // 2) for i, row_id in enumerate(ids)}
    )
    return ids


async def test_keyset_pages_list_every_row_once_newest_first(db: Database, topic: Topic) -> None:
    ids = await seed(db, topic, 23)
    seen: list[int] = []
    after: PageKey | None = None
    pages = 0
    while True:
        page = await Outbox(db).page(OutboxQuery(), after=after, limit=5)
        seen += [entry.id for entry in page.messages]
        pages += 1
        if page.older is None:
            break
        after = PageKey.parse(page.older.token())
    assert seen == sorted(ids, reverse=True)
    assert pages == 5


async def test_listing_filters_by_queue_state_and_dates(db: Database, topic: Topic) -> None:
    orders = await seed(db, topic, 6, queue="orders")
    await seed(db, topic, 4, queue="invoices")
    await Outbox(db).delete(orders[:1])
    where = parse_filter("orders", "2024-07-01 10:00:01", "2024-07-01 10:00:02", tz=UTC)

    page = await Outbox(db).page(OutboxQuery(where))
    assert [e.id for e in page.messages] == sorted(orders[2:6], reverse=True)
    assert {e.queue for e in page.messages} == {"orders"}

    deleted = await Outbox(db).page(OutboxQuery(state=State.DELETED))
    assert [e.id for e in deleted.messages] == orders[:1]
    pending = await Outbox(db).page(OutboxQuery(state=State.PENDING), limit=100)
    assert len(pending.messages) == 9


async def test_a_soft_deleted_row_stays_visible_as_deleted_and_is_never_requeued(
    db: Database, topic: Topic
) -> None:
    first, second = await seed(db, topic, 2)
    assert await Outbox(db).delete([first, 999_999]) == [first]
    assert await Outbox(db).delete([first]) == []  # once only

    entry = await Outbox(db).get(first)
    assert entry is not None and entry.state is State.DELETED and entry.deleted_at is not None
    default = await Outbox(db).page(OutboxQuery())
    assert [e.id for e in default.messages] == [second]

    settings = make_settings(db, topic.namespace)
    async with Publisher(settings.amqp, name=f"{topic.namespace}-browse") as publisher:
        report = await requeue_messages(Outbox(db), publisher, RequeueFilter())
    assert (report.published, report.failed) == (1, 0)
    assert [m.message_id for m in await take_all(topic.queue)] == [
        (await Outbox(db).get(second)).message_id  # type: ignore[union-attr]
    ]


async def test_requeue_of_selected_rows_sends_those_only_and_records_when(
    db: Database, topic: Topic
) -> None:
    ids = await seed(db, topic, 5)
    settings = make_settings(db, topic.namespace)
    async with Publisher(settings.amqp, name=f"{topic.namespace}-browse") as publisher:
        ledger = Outbox(db)
        first = await requeue_messages(ledger, publisher, selected(ids[:2]))
        # A processed row selected again is an explicit re-send: it goes once more.
        again = await requeue_messages(ledger, publisher, selected(ids[1:3]))
    assert (first.published, again.published) == (2, 2)

    sent = [str(m.message_id) for m in await take_all(topic.queue)]
    entries = {i: await Outbox(db).get(i) for i in ids}
    expected = [entries[i].message_id for i in (ids[0], ids[1], ids[1], ids[2])]  # type: ignore[union-attr]
    assert sorted(sent) == sorted(expected)
    for row_id in ids[:3]:
        entry = entries[row_id]
        assert entry is not None and entry.state is State.PROCESSED
        assert entry.requeued_at is not None and entry.processed_at is not None
    for row_id in ids[3:]:
        entry = entries[row_id]
        assert entry is not None and entry.state is State.PENDING and entry.requeued_at is None


async def test_a_json_body_is_pretty_printed_and_other_text_left_as_it_is(
    db: Database, topic: Topic
) -> None:
    (row_id,) = await seed_rows(
        db, [(topic.route("k"), Message(type="t", payload={"b": [1], "a": "<x>"}), "")]
    )
    entry = await Outbox(db).get(row_id)
    assert entry is not None
    assert entry.pretty_body() == '{\n  "a": "<x>",\n  "b": [\n    1\n  ]\n}'
    assert entry.to_json()["state"] == "pending"
