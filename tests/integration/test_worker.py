"""The Worker as a daemon: it survives the broker dropping its connections, starts when the
broker comes up, drains on SIGTERM without losing or doubling a message, and stops with
its siblings when one service crashes.

The broker closes only this test's connections (``rabbitmqctl close_connection`` on the
connection names, the same CONNECTION_FORCED that ``close_all_connections`` sends): tests and
systems of other people sharing the broker are left alone, and nothing here depends on any
connection but the test's own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from helpers import Eventually, Handled, publish, work
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.errors import ServiceCrashed
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.messaging.service import run_services
from rabbitry.messaging.topology import dlq_name
from rabbitry.messaging.worker import Worker

if TYPE_CHECKING:
    from conftest import BrokerProbe, Endpoint, WorkerRunner

WORKER_PROC = Path(__file__).with_name("worker_proc.py")


# --- reconnecting ----------------------------------------------------------------------------


async def test_worker_consumes_again_after_the_broker_closes_its_connections(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue, topology = work(settings)
    handled = Handled()

    before, after = Message(type="t", payload=1), Message(type="t", payload=2)
    async with run_worker([Subscription(queue, default=handled)], topology) as worker:
        await publish(settings, queue, before)
        await eventually(handled.include(before.id), what="the first message")

        closed = await broker.close_connections(worker.name)
        assert closed >= 1, "the worker's connection was not found on the broker"

        # A fresh publisher: this test does not lean on any connection that existed before.
        await publish(settings, queue, after)
        await eventually(handled.include(after.id), what="a message after the reconnect")
        assert worker.connected.is_set()

    assert [m.id for m in handled] == [before.id, after.id]
    assert await broker.counts(queue) == (0, 0)


async def test_worker_recovers_when_the_broker_drops_all_of_its_connections_at_once(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # What `rabbitmqctl close_all_connections` does to a worker, limited to this test's own
    # connections (their names start with its namespace) so that whatever else runs on the
    # broker carries on: both of the worker's links and the test's declarer go at once.
    first, first_topology = work(settings, "first")
    second, second_topology = work(settings, "second")
    handled = Handled()

    subscriptions = [Subscription(first, default=handled), Subscription(second, default=handled)]
    before = [Message(type="t", payload=n) for n in (1, 2)]
    after = [Message(type="t", payload=n) for n in (3, 4)]
    async with run_worker(subscriptions, first_topology | second_topology) as worker:
        await publish(settings, first, before[0])
        await publish(settings, second, before[1])
        await eventually(handled.include(*(m.id for m in before)), what="the first messages")

        closed = await broker.close_connections(settings.namespace, "rabbitry test")
        assert closed >= 2, "the worker's connections were not found on the broker"

        await publish(settings, first, after[0])
        await publish(settings, second, after[1])
        await eventually(
            handled.include(*(m.id for m in after)), what="messages after the reconnect"
        )
        assert worker.connected.is_set()

    assert sorted(m.id for m in handled) == sorted(m.id for m in before + after)
    assert await broker.counts(first) == (0, 0)
    assert await broker.counts(second) == (0, 0)


async def test_a_message_whose_handler_was_cut_off_by_a_dropped_connection_comes_again(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # Acked only after the work: work that could not finish is not lost with the connection.
    queue, topology = work(settings)
    calls: list[str] = []
    first_call = asyncio.Event()
    finished: list[str] = []

    async def handle(message: Message) -> None:
        calls.append(message.id)
        if len(calls) == 1:
            first_call.set()
            await asyncio.Event().wait()  # busy until the connection goes
        finished.append(message.id)

    message = Message(type="t", payload={})
    async with run_worker([Subscription(queue, default=handle)], topology) as worker:
        await publish(settings, queue, message)
        await asyncio.wait_for(first_call.wait(), 15)
        assert await broker.close_connections(worker.name) >= 1

        async def done() -> bool:
            return finished == [message.id]

        await eventually(done, what="the message handled after the reconnect")

    assert calls == [message.id, message.id]
    assert await broker.counts(queue) == (0, 0)


async def test_an_idempotent_batch_cut_off_by_a_dropped_connection_is_finished_all_the_same(
    settings: Settings,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # A store keyed by message id: what was delivered is stored at once, not left for the
    # broker to give back (a quorum queue may do so after later messages). The broker still
    # delivers it again, unacked; the second call finds it done.
    queue, topology = work(settings)
    holding, release = asyncio.Event(), asyncio.Event()
    calls: list[list[str]] = []
    stored: list[str] = []
    cancelled: list[list[str]] = []

    async def store(messages: Sequence[Message]) -> list[BaseException | None]:
        ids = [m.id for m in messages]
        calls.append(ids)
        try:
            if len(calls) == 1:
                holding.set()
                await release.wait()  # busy while the connection goes
        except asyncio.CancelledError:
            cancelled.append(ids)
            raise
        stored.extend(i for i in ids if i not in stored)
        return [None] * len(messages)

    messages = [Message(type="t", payload={"n": n}) for n in range(5)]
    subscription = Subscription(queue, batch=store, batch_size=2, prefetch=10, idempotent=True)
    async with run_worker([subscription], topology) as worker:
        await publish(settings, queue, *messages)
        await asyncio.wait_for(holding.wait(), 15)

        async def all_delivered() -> bool:
            return await broker.counts(queue) == (0, 5)

        await eventually(all_delivered, what="the five delivered, none acked")
        assert await broker.close_connections(worker.name) >= 1
        await asyncio.sleep(0.2)
        release.set()

        async def all_stored_and_settled() -> bool:
            return len(stored) == 5 and await broker.counts(queue) == (0, 0)

        await eventually(all_stored_and_settled, what="every message stored and acked")
    assert cancelled == []
    # Each twice: the held call and the rest of what was delivered ran on after the
    # connection was lost, and the broker delivered all five again to the new connection.
    assert Counter(i for ids in calls for i in ids) == {m.id: 2 for m in messages}
    assert sorted(stored) == sorted(m.id for m in messages)


async def test_worker_declares_its_topology_again_when_it_reconnects(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # A broker restart loses what was not durable, an operator may delete a queue: after a
    # reconnect the worker declares everything it needs again before consuming.
    queue, topology = work(settings)
    handled = Handled()

    message = Message(type="t", payload={})
    async with run_worker([Subscription(queue, default=handled)], topology) as worker:
        await declarer.delete(topology)
        await broker.close_connections(worker.name)

        async def delivered() -> bool:
            # Unroutable until the worker has declared the queue again.
            async with Publisher(settings.amqp) as publisher:
                result = await publisher.publish(message, Route("", queue))
            return result.status is PublishStatus.PUBLISHED

        await eventually(delivered, what="the queue to be declared again")
        await eventually(handled.include(message.id), what="the message")

    queues, _ = await broker.objects(settings.namespace)
    assert {q.name for q in topology.queues} <= set(queues)


async def test_worker_whose_queue_is_deleted_under_it_declares_it_again_and_resumes(
    settings: Settings,
    declarer: Declarer,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    # The broker cancels the consumer of a deleted queue (basic.cancel) but keeps the
    # connection: a worker that only watches its connection would sit idle for ever.
    queue, topology = work(settings)
    handled = Handled()

    message = Message(type="t", payload={})
    async with run_worker([Subscription(queue, default=handled)], topology):
        await declarer.delete(topology)

        async def delivered() -> bool:
            async with Publisher(settings.amqp) as publisher:
                result = await publisher.publish(message, Route("", queue))
            return result.status is PublishStatus.PUBLISHED

        await eventually(delivered, what="the queue to be declared again")
        await eventually(handled.include(message.id), what="the message")


async def test_worker_started_while_the_broker_is_down_consumes_once_it_is_up(
    settings: Settings,
    declarer: Declarer,
    endpoint: Endpoint,
    eventually: Eventually,
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue, topology = work(settings)
    handled = Handled()

    behind_proxy = settings.model_copy(update={"amqp_url": SecretStr(endpoint.url)})
    worker = Worker(
        f"{settings.namespace}-worker",
        [Subscription(queue, default=handled)],
        topology,
        amqp=behind_proxy.amqp,
        retry=behind_proxy.retry,
    )
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    try:

        async def refused_twice() -> bool:
            refused = ("broker unavailable", "broker unreachable")
            return sum(any(w in r.getMessage() for w in refused) for r in caplog.records) >= 2

        # Two refused attempts: the worker keeps trying, no crash.
        await eventually(refused_twice, what="two refused connection attempts")
        assert not task.done()
        assert not worker.connected.is_set()
        await endpoint.open("forward")
        await asyncio.wait_for(worker.connected.wait(), 30)
        message = Message(type="t", payload={})
        await publish(settings, queue, message)
        await eventually(handled.include(message.id), what="the message")
    finally:
        stopping.set()
        await asyncio.wait_for(task, settings.drain_timeout + 15)


# --- graceful stop ---------------------------------------------------------------------------


async def start_worker_process(
    settings: Settings, queue: str, tmp_path: Path, handler_seconds: float, **env: str
) -> tuple[asyncio.subprocess.Process, Path, Path]:
    started, finished = tmp_path / "started", tmp_path / "finished"
    started.touch()
    finished.touch()
    environment = {
        **os.environ,
        "RABBITRY_AMQP_URL": settings.amqp_url.get_secret_value(),
        "RABBITRY_NAMESPACE": settings.namespace,
        "RABBITRY_DATA_DIR": str(tmp_path),
        "RABBITRY_MAX_ATTEMPTS": str(settings.max_attempts),
        "RABBITRY_RETRY_BASE_DELAY": str(settings.retry_base_delay),
        "RABBITRY_QUEUE_TYPE": settings.queue_type.value,
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER_PROC),
        queue,
        str(started),
        str(finished),
        str(handler_seconds),
        env=environment,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("the worker process did not start consuming") from None
    assert line.strip() == b"ready", line
    return proc, started, finished


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split()


async def test_sigterm_drains_handlers_in_flight_and_leaves_the_rest_queued(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    eventually: Eventually,
    tmp_path: Path,
) -> None:
    queue, topology = work(settings)
    await declarer.declare(topology)
    messages = [Message(type="t", payload={"n": n}) for n in range(30)]
    proc, started, finished = await start_worker_process(
        settings,
        queue,
        tmp_path,
        handler_seconds=1.0,
        RABBITRY_CONCURRENCY="4",
        RABBITRY_PREFETCH="10",
        RABBITRY_DRAIN_TIMEOUT="20",
    )
    try:
        await publish(settings, queue, *messages)

        async def in_flight() -> bool:
            return len(set(lines(started)) - set(lines(finished))) >= 1

        await eventually(in_flight, what="handlers in flight")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 20 + 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert code == 0
    done = lines(finished)
    assert sorted(lines(started)) == sorted(done)  # every handler begun was let finish
    assert len(done) == len(set(done)) and len(done) < len(messages)
    ready, unacked = await broker.counts(queue)
    assert unacked == 0
    assert ready + len(done) == len(messages)
    queued = {r.headers["rr_id"] for r in await broker.get_all(queue)}
    assert queued.isdisjoint(done)  # acked when finished: never both done and queued
    assert queued | set(done) == {m.id for m in messages}
    assert await declarer.queue_size(dlq_name(queue)) == 0


async def test_sigterm_with_a_handler_slower_than_the_drain_timeout_gives_its_message_back(
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    eventually: Eventually,
    tmp_path: Path,
) -> None:
    queue, topology = work(settings)
    await declarer.declare(topology)
    messages = [Message(type="t", payload={"n": n}) for n in range(5)]
    proc, started, finished = await start_worker_process(
        settings,
        queue,
        tmp_path,
        handler_seconds=600,
        RABBITRY_CONCURRENCY="2",
        RABBITRY_DRAIN_TIMEOUT="1",
    )
    try:
        await publish(settings, queue, *messages)

        async def busy() -> bool:
            return len(lines(started)) >= 1

        await eventually(busy, what="a handler to start")
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 1 + 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert code == 0
    assert lines(finished) == []

    async def all_back() -> bool:
        return await broker.counts(queue) == (len(messages), 0)

    await eventually(all_back, what="every message back in the queue")
    queued = {r.headers["rr_id"] for r in await broker.get_all(queue)}
    assert queued == {m.id for m in messages}


# --- services --------------------------------------------------------------------------------


class Crashing:
    """Crashes once ``worker`` consumes, so that stopping the worker is something to see."""

    name = "crashing"

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def run(self, stopping: asyncio.Event) -> None:
        await self.worker.connected.wait()
        raise RuntimeError("boom")


async def test_a_crashing_service_stops_the_worker_beside_it(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue, topology = work(settings)
    worker = Worker(
        f"{settings.namespace}-worker", [Subscription(queue)], topology, amqp=settings.amqp
    )
    stopping = asyncio.Event()
    with pytest.raises(ServiceCrashed, match="service crashing crashed: boom"):
        await asyncio.wait_for(run_services([worker, Crashing(worker)], stopping), 30)
    assert stopping.is_set()
    assert not worker.connected.is_set()  # it had connected: the crash waited for that
    assert await broker.close_connections(worker.name) == 0  # nothing of it left open


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_the_worker_process_stops_cleanly_on_a_signal_when_idle(
    settings: Settings, declarer: Declarer, tmp_path: Path, sig: signal.Signals
) -> None:
    queue, _ = work(settings)
    proc, _, _ = await start_worker_process(settings, queue, tmp_path, handler_seconds=0)
    proc.send_signal(sig)
    try:
        code = await asyncio.wait_for(proc.wait(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0
