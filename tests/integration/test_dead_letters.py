"""Dead letters: listed without being removed, moved back to the queue they died in only once
the broker confirmed the copy (one, selected, all), with the retry count reset."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
from pathlib import Path

from conftest import BrokerProbe, WorkerRunner
from helpers import RABBITRY, Eventually, cli_environment
from rabbitry.amqp.declarer import Declarer
from rabbitry.app.operations import declare_system
from rabbitry.app.probe import dead_letter_depths
from rabbitry.backoffice.overview import Broker, overview
from rabbitry.config import Settings
from rabbitry.errors import NotFound
from rabbitry.events.topology import EventsLayout
from rabbitry.messaging import Reject, Subscription, work_queue
from rabbitry.messaging.deadletters import list_dead_letters, move_dead_letters
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.topology import Topology, dlq_name
from rabbitry.storage import Database


async def dead_letter(broker: BrokerProbe, queue: str, n: int, **headers: object) -> str:
    """Put a message in ``queue``'s DLQ the way Rabbitry's consumer does."""
    message_id = f"m-{n}"
    await broker.publish(
        "",
        dlq_name(queue),
        json.dumps({"n": n}).encode(),
        message_id=message_id,
        headers={
            "rr_id": message_id,
            "rr_job": "order.placed",
            "x-rabbitry-reason": f"bad order {n}",
            "x-rabbitry-error": f"Reject: bad order {n}",
            "x-rabbitry-queue": queue,
            "x-rabbitry-attempt": 3,
            **headers,
        },
    )
    return message_id


async def test_listing_dead_letters_shows_their_reason_and_leaves_them_there(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = f"{settings.namespace}.orders"
    await declarer.declare(work_queue(queue, policy=settings.retry))
    ids = [await dead_letter(broker, queue, n) for n in range(3)]

    letters, total = await list_dead_letters(declarer, dlq_name(queue), limit=2)
    assert total == 3
    assert [d.id for d in letters] == ids[:2]
    assert letters[0].reason == "bad order 0" and letters[0].queue == queue
    assert letters[0].attempt == 3 and json.loads(letters[0].body) == {"n": 0}
    # Looking removed nothing, and gave the messages back in their order.
    assert await broker.counts(dlq_name(queue)) == (3, 0)
    again, _ = await list_dead_letters(declarer, dlq_name(queue))
    assert [d.id for d in again] == ids


async def test_moving_selected_dead_letters_sends_them_back_with_a_fresh_attempt_count(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = f"{settings.namespace}.orders"
    await declarer.declare(work_queue(queue, policy=settings.retry))
    ids = [await dead_letter(broker, queue, n) for n in range(4)]

    async with Publisher(settings.amqp, name=f"{settings.namespace}-move") as publisher:
        report = await move_dead_letters(
            declarer, publisher, dlq_name(queue), [ids[1], ids[3], "nope"]
        )
    assert sorted(report.moved) == [ids[1], ids[3]] and report.not_found == ["nope"]

    back = await broker.get_all(queue)
    assert [r.properties.message_id for r in back] == [ids[1], ids[3]]
    for received in back:
        assert "x-rabbitry-reason" not in received.headers
        assert "x-rabbitry-attempt" not in received.headers
        assert received.headers["rr_job"] == "order.placed"
        assert received.tags["rr_delay"] == "l"  # RoadRunner's field type, not the width of 0
    remaining = await broker.get_all(dlq_name(queue))
    assert [r.properties.message_id for r in remaining] == [ids[0], ids[2]]


async def test_moving_all_dead_letters_empties_the_dead_letter_queue_once(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue = f"{settings.namespace}.orders"
    topology = work_queue(queue, policy=settings.retry)
    await declarer.declare(topology)
    handled: list[str] = []

    async def strict(message: Message) -> None:
        handled.append(message.id)
        raise Reject("still bad")

    async with Publisher(settings.amqp, name=f"{settings.namespace}-move") as publisher:
        for n in range(5):
            await publisher.publish(
                Message(type="order.placed", payload={"n": n}), Route("", queue)
            )
        subscription = Subscription(queue, handlers={"order.placed": strict})
        async with run_worker([subscription], topology):

            async def five_dead() -> bool:
                return (await broker.counts(dlq_name(queue)))[0] == 5

            await eventually(five_dead, what="five dead letters")
            letters, _ = await list_dead_letters(declarer, dlq_name(queue))
            assert {d.reason for d in letters} == {"still bad"}
            report = await move_dead_letters(declarer, publisher, dlq_name(queue))
            assert len(report.moved) == 5 and not report.failed

            # The worker rejects them again: they die once more, and the move did not loop.
            async def dead_again() -> bool:
                return len(handled) == 10 and await five_dead()

            await eventually(dead_again, what="the moved messages handled and dead again")
    assert len(handled) == 10
    assert sorted(handled[:5]) == sorted(handled[5:])


async def test_a_dead_letter_whose_queue_is_gone_stays_in_the_dead_letter_queue(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = f"{settings.namespace}.orders"
    topology = work_queue(queue, policy=settings.retry)
    await declarer.declare(topology)
    kept = await dead_letter(broker, queue, 1)
    gone = [q for q in topology.queues if q.name == queue]
    await declarer.delete(Topology.of(queues=gone))
    async with Publisher(settings.amqp, name=f"{settings.namespace}-move") as publisher:
        report = await move_dead_letters(declarer, publisher, dlq_name(queue))
    assert report.moved == [] and kept in report.failed
    assert await broker.counts(dlq_name(queue)) == (1, 0)


async def test_a_dead_letter_goes_back_to_its_own_queue_whatever_its_headers_claim(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    # A producer sets x-rabbitry-queue and x-first-death-queue on its message: moving it back
    # must not deliver it into another tenant's queue.
    mine = f"{settings.namespace}.tenant.a.removals"
    theirs = f"{settings.namespace}.tenant.b.removals"
    await declarer.declare(
        work_queue(mine, policy=settings.retry) | work_queue(theirs, policy=settings.retry)
    )
    crafted = await dead_letter(
        broker, mine, 1, **{"x-rabbitry-queue": theirs, "x-first-death-queue": theirs}
    )
    letters, _ = await list_dead_letters(declarer, dlq_name(mine))
    assert [d.queue for d in letters] == [mine]
    async with Publisher(settings.amqp, name=f"{settings.namespace}-move") as publisher:
        report = await move_dead_letters(declarer, publisher, dlq_name(mine))
    assert report.moved == [crafted]
    assert await broker.counts(theirs) == (0, 0)
    assert [r.properties.message_id for r in await broker.get_all(mine)] == [crafted]


async def test_a_missing_dead_letter_queue_is_not_found(
    settings: Settings, declarer: Declarer
) -> None:
    try:
        await list_dead_letters(declarer, f"{settings.namespace}.none.dlq")
    except NotFound:
        pass
    else:
        raise AssertionError("a missing queue was listed")


async def test_the_dead_letter_queues_holding_messages_are_found_the_users_own_included(
    settings: Settings, declarer: Declarer, broker: BrokerProbe, tmp_path: Path
) -> None:
    # The system's queues, and a library user's own work queue (shop.orders, namespaced).
    await declare_system(settings, [])
    own = f"{settings.namespace}.shop.orders"
    await declarer.declare(work_queue(own, policy=settings.retry))
    system = EventsLayout(settings.namespace).event_sourcing_queue
    for n in range(2):
        await dead_letter(broker, own, n)
    await dead_letter(broker, system, 9)
    watching = settings.model_copy(update={"work_queues": [own]})

    assert await dead_letter_depths(watching) == [(dlq_name(own), 2), (dlq_name(system), 1)]
    # Only names it is told: AMQP lists no queues.
    assert await dead_letter_depths(settings) == [(dlq_name(system), 1)]

    # The dashboard's figures (and its dead-letter page's) show the user's queue too.
    async with Database(f"sqlite+aiosqlite:///{tmp_path / 'bo.db'}") as db:
        await db.upgrade()
        broker_link = Broker(watching)
        try:
            figures = await overview(watching, db, broker_link, None)
        finally:
            await broker_link.forget()
    (shown,) = [q for q in figures.queues if q.name == own]
    assert (shown.dead_letters, shown.has_dlq) == (2, True)
    assert figures.dead_letter_total == 2


async def test_dead_letters_list_without_a_queue_prints_the_queues_that_hold_some(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    own = f"{settings.namespace}.shop.orders"
    await declarer.declare(work_queue(own, policy=settings.retry))
    await dead_letter(broker, own, 1)
    env = cli_environment(settings, RABBITRY_WORK_QUEUES=json.dumps([own]))
    run = functools.partial(
        subprocess.run, env=env, cwd=settings.data_dir, capture_output=True, text=True, timeout=120
    )
    table = await asyncio.to_thread(run, [RABBITRY, "dead-letters", "list"])
    assert table.returncode == 0, table.stderr
    assert (
        f"{dlq_name(own)} " in table.stdout and f"dead-letters list {dlq_name(own)}" in table.stdout
    )
    lines = await asyncio.to_thread(run, [RABBITRY, "dead-letters", "list", "--json"])
    assert [json.loads(line) for line in lines.stdout.splitlines()] == [
        {"queue": dlq_name(own), "dead_letters": 1}
    ]
