"""Event sourcing: how fast the workflow worker stores change events, and how long rebuilding
an entity's state takes as its history grows. One run, one broker, one fresh database.

Cases (N change events waiting in a queue, spread over 1,000 entities):
  (a) plain Rabbitry consumer: Worker + Subscription, a handler per message that does nothing
  (b) the same consumer with a handler per message that appends its event (one transaction
      each; timed on N/10 events, it is that much slower)
  (c) the workflow worker: validation, then group commit (one transaction per batch of up to
      250, with one partition up to IN_FLIGHT batches of disjoint entities in the database at
      once, with K one per partition; the next batch decoded while the previous ones are stored)
  (ch) the same worker with half its window of unacked deliveries (as before it held four
      batches per batch in the database: 1,000 with one partition)
  (c1) the same worker with one batch at a time (in_flight=1, as before IN_FLIGHT)
  (cW) W workflow worker processes (``--workers W``, with ``--partitions K`` > 1): W times
      ``rabbitry worker workflow``, started once the events wait in the queues; they share
      the K partitions (docs/events.md). Timed from the first event taken from the queues
      to the last one stored; CPU per event is the W processes' together.
  (c0) the worker as it was before both (PostgreSQL only): one batch at a time, each in three
      round trips (BEGIN with the locks, INSERT_FROM_HEADS, COMMIT; patched in here)
  (d) the database ceiling (PostgreSQL only): the same events written with raw asyncpg, no
      broker, in batches of the same size with the models' statement (one call of
      event_store_append(): the advisory locks, the INSERT that reads the heads, its commit;
      the worker's rows call, event_store_append_rows(), does the same with less work per
      event for the database, see docs/performance.md), the columns built before the clock
      starts: how far the database alone goes on this
      machine, so that (c)/(d) says what share of it the worker reaches. Timed with one
      connection (one batch in the database at a time) and with K+1 connections (K+1 batches
      at once, disjoint entities).
  (d3) the same with the three round trips the writer used before (BEGIN with the locks, the
      INSERT, COMMIT), one connection.
State rebuild: EventStore.state() for entities with 100, 1,000 and 10,000 events.

Every case reads the same K event-sourcing queues (``--partitions K``, the workflow worker's
RABBITRY_EVENTS_PARTITIONS; the events are routed by entity bucket when K > 1).

Rounds run the cases in turn, every other one in reverse order. Each ratio is printed as the
ratio of the cases' medians and as the median of the rounds' own ratios, with their middle
half: on this shared machine single rounds vary by a third, so the spread says how far to
trust a figure.

Each consumer case also prints the CPU time of this process per event while it ran (its
consumer or worker is all that runs in it then): unlike events/s, that holds on a loaded machine.
And, while it ran, the broker's and PostgreSQL's CPU per event and how busy the whole machine
was (of all its cores): where the three share the cores, that says which bound a case met.

Usage: python bench/events.py [--events N] [--rounds R] [--database postgresql|sqlite]
                              [--partitions K] [--workers W] [--cases a,c,ch,cW,...]
PostgreSQL (default) gets a database of its own, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
from sqlalchemy import text

from common import AMQP_URL, _ticks, broker_cpu, create_database, machine_cpu, postgres_cpu
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.events import store as store_module
from rabbitry.events.change import ChangeEvent, ChangeType, RecordedEvent
from rabbitry.events.emitter import Emitter
from rabbitry.events.incoming import Row, incoming_of
from rabbitry.events.postgresql_writer import (
    _APPEND_CALL,
    _columns,
    _fill_in,
    _lock_key,
    _numbered,
    append_postgresql,
)
from rabbitry.events.store import EventStore, Incoming
from rabbitry.events.topology import EventsLayout, events_topology, module_topology
from rabbitry.events.workflow import BATCH_SIZE, Outcomes, WorkflowWorker, tune_collector
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher
from rabbitry.messaging.topology import Topology
from rabbitry.messaging.worker import Worker
from rabbitry.storage.database import Database

ENTITIES = 1000
HISTORY_SIZES = (100, 1_000, 10_000)
# (d3): the insert the writer sent between BEGIN (with the locks) and COMMIT before it became
# one call of event_store_append(), which holds the same statement.
INSERT_FROM_HEADS = (
    "INSERT INTO event_store"
    ' (entity, entity_id, version, type, "user", data, message_id, occurred_at, recorded_at)'
    " SELECT e, i, v + coalesce((SELECT max(s.version) FROM event_store AS s"
    " WHERE s.entity = e AND s.entity_id = i), 0), t, u, CAST(d AS json), m, o, $9"
    " FROM unnest($1::varchar[], $2::bigint[], $3::int[], $4::varchar[], $5::varchar[],"
    " $6::text[], $7::varchar[], $8::timestamptz[])"
    " WITH ORDINALITY AS x(e, i, v, t, u, d, m, o, n) ORDER BY n"
    " ON CONFLICT (message_id) DO NOTHING RETURNING message_id, sequence, version"
)


class Clock:
    """First and last moment of work, and how many items were done."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.done = 0
        self.first = 0.0
        self.last = 0.0
        self.cpu_first = 0.0
        self.cpu_last = 0.0
        self.others_first = Others.now()
        self.others_last = self.others_first
        self.finished = asyncio.Event()

    def start(self) -> None:
        if not self.first:
            self.others_first = Others.now()
            self.first = time.perf_counter()
            self.cpu_first = time.process_time()

    def add(self, count: int) -> None:
        self.done += count
        if self.done >= self.expected and not self.last:
            self.last = time.perf_counter()
            self.cpu_last = time.process_time()
            self.others_last = Others.now()
            self.finished.set()

    @property
    def rate(self) -> float:
        return self.done / (self.last - self.first)

    @property
    def cpu_us(self) -> float:
        """CPU time of this process (all its threads) per item, in µs, while it worked."""
        return (self.cpu_last - self.cpu_first) / self.done * 1e6


@dataclass(frozen=True)
class Others:
    """CPU seconds so far of the broker, of PostgreSQL, and of the machine (busy, all)."""

    broker: float
    postgres: float
    busy: float
    all: float

    @classmethod
    def now(cls) -> Others:
        return cls(broker_cpu(), postgres_cpu(), *machine_cpu())

    def since(self, first: Others, done: int) -> tuple[float, float, float]:
        """The broker's and PostgreSQL's µs per item, and the share of the machine in use."""
        busy = (self.busy - first.busy) / max(self.all - first.all, 1e-9)
        return (
            (self.broker - first.broker) / done * 1e6,
            (self.postgres - first.postgres) / done * 1e6,
            busy,
        )


class TimedWorkflow(WorkflowWorker):
    clock: Clock

    async def store_events(self, messages: Sequence[Message]) -> Outcomes:
        self.clock.start()
        outcomes = await super().store_events(messages)
        self.clock.add(sum(1 for o in outcomes if o is None))
        return outcomes


def changes(n: int, round_id: str) -> list[ChangeEvent]:
    return [
        ChangeEvent(
            ChangeType.UPDATE, f"bench.{round_id}", i % ENTITIES, 1, {"n": i, "s": "x" * 40}
        )
        for i in range(n)
    ]


async def fill(settings: Settings, events: list[ChangeEvent]) -> None:
    async with Publisher(settings.amqp) as publisher:
        emitter = Emitter(publisher, settings)
        for start in range(0, len(events), 1000):
            await emitter.emit(events[start : start + 1000])


async def analyze(database: Database) -> None:
    """Refresh the planner's statistics, as autovacuum does on a live database: a fresh table
    that grew by thousands of rows in seconds would otherwise be planned as if empty."""
    async with database.session() as session:
        await session.execute(text("ANALYZE"))


# CPU µs per event of this process in the case that ran last (its consumer or worker, which
# share the process with nothing else while the clock runs): unlike events/s, it holds on a
# loaded machine.
CPU_US: list[float] = []
# The broker's and PostgreSQL's CPU µs per event and the machine's busy share, for the same case.
OTHERS: list[tuple[float, float, float]] = []


async def run_until(service: Worker | WorkflowWorker, clock: Clock) -> float:
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    await asyncio.wait_for(clock.finished.wait(), timeout=600)
    stopping.set()
    await task
    CPU_US.append(clock.cpu_us)
    OTHERS.append(clock.others_last.since(clock.others_first, clock.done))
    return clock.rate


async def plain_consumer(settings: Settings, database: Database, n: int) -> float:
    await fill(settings, changes(n, uuid.uuid4().hex[:8]))
    clock = Clock(n)

    async def handle(_: Message) -> None:
        clock.start()
        clock.add(1)

    # With the workflow worker's window, which it sizes for its batches, not the settings'.
    prefetch = WorkflowWorker(settings, database).prefetch
    worker = Worker(
        "bench", subscriptions(settings, handle, prefetch), Topology(), amqp=settings.amqp
    )
    return await run_until(worker, clock)


def subscriptions(
    settings: Settings, handle: Callable[[Message], Awaitable[None]], prefetch: int | None = None
) -> list[Subscription]:
    """The same handler on every partition's queue."""
    layout = EventsLayout(settings.namespace)
    return [
        Subscription(layout.partition_queue(p), default=handle, prefetch=prefetch)
        for p in range(settings.events_partitions)
    ]


async def per_message_store(settings: Settings, database: Database, n: int) -> float:
    n = max(n // 10, 1000)  # it is an order of magnitude slower: a tenth is enough to time it
    await fill(settings, changes(n, uuid.uuid4().hex[:8]))
    clock = Clock(n)
    store = EventStore(database)

    async def handle(message: Message) -> None:
        clock.start()
        change = ChangeEvent(ChangeType(message.type), **message.payload)
        await store.append([Incoming(change, message.id, message.timestamp)])
        clock.add(1)

    worker = Worker("bench", subscriptions(settings, handle), Topology(), amqp=settings.amqp)
    return await run_until(worker, clock)


async def workflow_batches(settings: Settings, database: Database, n: int) -> float:
    return await _workflow(settings, database, n, None)


async def workflow_one_batch(settings: Settings, database: Database, n: int) -> float:
    return await _workflow(settings, database, n, 1)


async def workflow_half_window(settings: Settings, database: Database, n: int) -> float:
    return await _workflow(
        settings, database, n, None, WorkflowWorker(settings, database).prefetch // 2
    )


async def _workflow(
    settings: Settings,
    database: Database,
    n: int,
    in_flight: int | None,
    prefetch: int | None = None,
) -> float:
    await fill(settings, changes(n, uuid.uuid4().hex[:8]))
    service = TimedWorkflow(settings, database, in_flight=in_flight, prefetch=prefetch)
    service.clock = Clock(n)
    return await run_until(service, service.clock)


async def workflow_processes(
    settings: Settings, database: Database, n: int, url: str, workers: int
) -> float:
    """Case (cW): ``workers`` processes of ``rabbitry worker workflow`` store ``n`` events
    waiting in the queues; events stored per second from the first to the last."""
    round_id = uuid.uuid4().hex[:8]
    entity = f"bench.{round_id}"  # what changes() names the round's entities
    await fill(settings, changes(n, round_id))
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": settings.namespace,
        "RABBITRY_AMQP_URL": AMQP_URL,
        "RABBITRY_DATABASE_URL": url,
        "RABBITRY_EVENTS_PARTITIONS": str(settings.events_partitions),
        "RABBITRY_PREFETCH": str(settings.prefetch),
    }
    rabbitry = str(Path(sys.executable).with_name("rabbitry"))
    with tempfile.TemporaryFile() as log:
        processes = [
            await asyncio.create_subprocess_exec(
                rabbitry, "worker", "workflow", env=env, stderr=log
            )
            for _ in range(workers)
        ]
        try:
            # The broker says when the workers start taking the events (the queues' ready
            # messages fall); the database, counted only once none is left waiting (a count
            # of a growing table would take the cores it measures), when the last is stored.
            count = text("SELECT count(*) FROM event_store WHERE entity = :entity")
            layout = EventsLayout(settings.namespace)
            queues = [layout.partition_queue(p) for p in range(settings.events_partitions)]
            first = last = 0.0
            started: tuple[int, Others] | None = None
            ended: tuple[int, Others] | None = None
            deadline = time.monotonic() + 600
            async with (
                await Declarer.connect(AMQP_URL) as declarer,
                database.engine.connect() as conn,
            ):
                while time.monotonic() < deadline:
                    ready = sum([(await declarer.queue_status(q)).messages for q in queues])
                    if ready < n and not first:
                        first = time.perf_counter()
                        started = (sum(_ticks(p.pid) for p in processes), Others.now())
                    if not ready:
                        done = (await conn.execute(count, {"entity": entity})).scalar_one()
                        await conn.rollback()  # each count in a snapshot of its own
                        if done >= n:
                            last = time.perf_counter()
                            ended = (sum(_ticks(p.pid) for p in processes), Others.now())
                            break
                    if any(p.returncode is not None for p in processes):
                        log.seek(0)
                        raise RuntimeError(f"a worker exited:\n{log.read().decode()[-3000:]}")
                    await asyncio.sleep(0.01)
            if started is None or ended is None:
                raise RuntimeError("the workers did not store every event in 10 minutes")
        finally:
            for process in processes:
                if process.returncode is None:
                    process.terminate()
            for process in processes:
                await asyncio.wait_for(process.wait(), timeout=60)
    CPU_US.append((ended[0] - started[0]) / os.sysconf("SC_CLK_TCK") / n * 1e6)
    OTHERS.append(ended[1].since(started[1], n))
    return n / (last - first)


async def three_round_trips(
    database: Database, events: Sequence[Incoming]
) -> list[RecordedEvent | None]:
    """The PostgreSQL append as it was before event_store_append(), for (c0): BEGIN with the
    locks, the insert reading the heads, COMMIT. A batch holding a repeat (none here) takes
    today's way."""
    recorded_at = _now()
    results = _numbered(events, {}, set(), recorded_at)
    stored = [r for r in results if r is not None]
    keys = sorted({_lock_key((e.entity, e.id)) for e in stored})
    async with database.writer_engine.connect() as conn:
        driver: Any = (await conn.get_raw_connection()).driver_connection
        await driver.execute(
            "BEGIN; SELECT pg_advisory_xact_lock(k) FROM unnest"
            f"('{{{','.join(map(str, keys))}}}'::bigint[]) t(k)"
        )
        rows = await driver.fetch(INSERT_FROM_HEADS, *_columns(stored), recorded_at)
        if len(rows) != len(stored):
            await driver.execute("ROLLBACK")
            return await append_postgresql(database, events)
        await driver.execute("COMMIT")
    _fill_in(stored, rows)
    return results


async def workflow_as_before(settings: Settings, database: Database, n: int) -> float:
    names = vars(store_module)  # EventStore calls the writer by its module-level name
    original = names["append_rows_postgresql"]

    async def rows_in_three(database: Database, rows: Sequence[Row], _: Any = None) -> list[None]:
        await three_round_trips(database, [incoming_of(row) for row in rows])
        return [None] * len(rows)

    names["append_rows_postgresql"] = rows_in_three
    try:
        return await _workflow(settings, database, n, 1)
    finally:
        names["append_rows_postgresql"] = original


async def database_ceiling(url: str, n: int, connections: int, *, one_call: bool) -> float:
    """Case (d): the models' append statements per batch of BATCH_SIZE straight on asyncpg,
    ``connections`` batches in the database at once (each connection its own entities),
    nothing else in the process; events stored per second. ``one_call``: the one round trip
    of event_store_append(); else the writer's three of before (BEGIN with the locks, the
    INSERT reading the heads, COMMIT)."""
    events = [
        Incoming(change, str(uuid.uuid4()), _now()) for change in changes(n, uuid.uuid4().hex[:8])
    ]
    lanes: list[list[Incoming]] = [[] for _ in range(connections)]
    for event in events:  # an entity's events all go the same way, in order
        lanes[event.change.id % connections].append(event)
    work: list[list[tuple[list[int], tuple[list[Any], ...]]]] = []
    for lane in lanes:  # the statements' arguments, built before the clock starts
        batches = []
        for start in range(0, len(lane), BATCH_SIZE):
            batch = lane[start : start + BATCH_SIZE]
            keys = sorted({_lock_key((e.change.entity, e.change.id)) for e in batch})
            stored = [r for r in _numbered(batch, {}, set(), _now()) if r is not None]
            batches.append((keys, _columns(stored)))
        work.append(batches)
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    conns = [await asyncpg.connect(dsn) for _ in range(connections)]

    async def write(conn: Any, batches: list[tuple[list[int], tuple[list[Any], ...]]]) -> None:
        for keys, columns in batches:
            if one_call:
                await conn.fetch(_APPEND_CALL, *columns, _now(), keys)
                continue
            await conn.execute(
                "BEGIN; SELECT pg_advisory_xact_lock(k) FROM unnest"
                f"('{{{','.join(map(str, keys))}}}'::bigint[]) t(k)"
            )
            await conn.fetch(INSERT_FROM_HEADS, *columns, _now())
            await conn.execute("COMMIT")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(write(c, b) for c, b in zip(conns, work, strict=True)))
        return n / (time.perf_counter() - started)
    finally:
        for conn in conns:
            await conn.close()


async def rebuild_times(database: Database, rounds: int) -> dict[int, float]:
    store = EventStore(database)
    times: dict[int, float] = {}
    for size in HISTORY_SIZES:
        entity = f"bench.history.{size}"
        events = [
            Incoming(
                ChangeEvent(
                    ChangeType.INSERT if i == 0 else ChangeType.UPDATE,
                    entity,
                    1,
                    1,
                    {"n": i, f"field{i % 20}": "x" * 20},
                ),
                str(uuid.uuid4()),
                _now(),
            )
            for i in range(size)
        ]
        for start in range(0, size, 1000):
            await store.append(events[start : start + 1000])
        await analyze(database)
        samples = []
        for _ in range(rounds):
            begin = time.perf_counter()
            state = await store.state(entity, 1)
            samples.append(time.perf_counter() - begin)
            assert state is not None and state.version == size
        times[size] = statistics.median(samples)
    return times


def _ceiling(connections: int, one_call: bool) -> str:
    if one_call:
        return f"(d) database alone, one call a batch, {connections} connection(s)"
    return f"(d3) database alone, 3 round trips a batch, {connections} connection(s)"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _label(name: str) -> str:
    return name[1 : name.index(")")]


async def main(
    n: int, rounds: int, kind: str, partitions: int, workers: int, only: set[str]
) -> None:
    settings = Settings(
        namespace=f"bench{uuid.uuid4().hex[:8]}",
        amqp_url=AMQP_URL,
        prefetch=1000,
        concurrency=64,
        events_partitions=partitions,
    )
    topology = events_topology(settings) | module_topology(settings, [])
    rebuild: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = await create_database(kind, Path(tmp))
        database = Database(url)
        try:
            await database.upgrade()
            async with await Declarer.connect(AMQP_URL) as declarer:
                await declarer.declare(topology)
            # As WorkflowService does at start (`rabbitry worker workflow`, `rabbitry up`):
            # what is loaded by now lives as long as the process; every case runs with it.
            tune_collector()
            cases = {
                "(a) plain consumer, no-op handler": plain_consumer,
                "(b) handler per message, one transaction each": per_message_store,
                "(c) workflow worker, group commit (<= 250 per transaction)": workflow_batches,
                "(ch) the same, half its window of unacked deliveries": workflow_half_window,
                "(c1) the same, one batch in the database at a time": workflow_one_batch,
            }
            if workers > 1:

                async def processes(settings: Settings, database: Database, n: int) -> float:
                    return await workflow_processes(settings, database, n, url, workers)

                cases[f"(cW) {workers} workflow worker processes, sharing the partitions"] = (
                    processes
                )
            if kind == "postgresql":
                cases["(c0) as before: one batch at a time, 3 round trips each"] = (
                    workflow_as_before
                )
            cases = {name: case for name, case in cases.items() if not only or _label(name) in only}
            rates: dict[str, list[float]] = {name: [] for name in cases}
            cpu: dict[str, list[float]] = {name: [] for name in cases}
            others: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
            # (connections, one call per batch)
            ceilings = [(1, True), (partitions + 1, True), (1, False)]
            if kind != "postgresql":
                ceilings = []
            ceilings = [
                (c, one) for c, one in ceilings if not only or _label(_ceiling(c, one)) in only
            ]
            for connections, one_call in ceilings:
                rates[_ceiling(connections, one_call)] = []
            for round_number in range(rounds):
                # Every other round the other way round: what one case leaves the broker and
                # the database to finish (a queue's acked messages, dirty pages) then slows
                # each case about as often.
                order = list(cases.items())
                for name, case in order if round_number % 2 == 0 else order[::-1]:
                    await analyze(database)
                    rates[name].append(await case(settings, database, n))
                    cpu[name].append(CPU_US[-1])
                    others[name].append(OTHERS[-1])
                for connections, one_call in ceilings:
                    await analyze(database)
                    rates[_ceiling(connections, one_call)].append(
                        await database_ceiling(url, n, connections, one_call=one_call)
                    )
            if not only or "rebuild" in only:
                rebuild = await rebuild_times(database, max(rounds, 5))
        finally:
            await database.close()
            async with await Declarer.connect(AMQP_URL) as declarer:
                await declarer.delete(topology)
            await drop()
    report(kind, n, partitions, rounds, rates, cpu, others)
    if rebuild:
        print(f"\nstate rebuild ({kind}, median of {max(rounds, 5)})")
        print(f"{'events':>8} {'ms':>9} {'us/event':>9} {'vs 100':>7}")
        for size, seconds in rebuild.items():
            ratio = seconds / rebuild[HISTORY_SIZES[0]]
            print(f"{size:8,} {seconds * 1000:9.1f} {seconds / size * 1e6:9.1f} {ratio:6.1f}x")


def report(
    kind: str,
    n: int,
    partitions: int,
    rounds: int,
    rates: dict[str, list[float]],
    cpu: dict[str, list[float]],
    others: dict[str, list[tuple[float, float, float]]],
) -> None:
    by_label = {_label(name): values for name, values in rates.items()}
    base = statistics.median(by_label["a"]) if "a" in by_label else None
    print(
        f"\nevents stored per second ({kind}, {n} events, {partitions} partition(s),"
        f" median of {rounds} rounds; CPU: this process's, the broker's and PostgreSQL's"
        f" per event, and the machine's share of its {os.cpu_count()} cores in use)"
    )
    print(
        f"{'case':58} {'msg/s':>9} {'vs (a)':>7} {'CPU us':>7} {'vs (a)':>7}"
        f" {'broker':>7} {'pg':>6} {'busy':>5}"
    )
    cpu_of = {_label(name): values for name, values in cpu.items()}
    base_cpu = statistics.median(cpu_of["a"]) if "a" in cpu_of else None
    for name, values in rates.items():
        rate = statistics.median(values)
        line = f"{name:58} {rate:9,.0f}"
        line += f" {rate / base:6.2f}x" if base else " " * 8
        if name in cpu:
            us = statistics.median(cpu[name])
            line += f" {us:7.1f}" + (f" {us / base_cpu:6.2f}x" if base_cpu else " " * 8)
        if others.get(name):
            broker, pg, busy = (statistics.median(x) for x in zip(*others[name], strict=True))
            line += f" {broker:7.1f} {pg:6.1f} {busy:5.0%}"
        print(line)

    def versus(top: str, bottom: str, what: str) -> None:
        if top in by_label and bottom in by_label:
            t, b = by_label[top], by_label[bottom]
            ratios = [x / y for x, y in zip(t, b, strict=True)]
            # The rounds' own ratios too (each from two runs minutes apart at most, so slow
            # spells of the machine cancel out more), with their middle half where there are
            # enough of them to say.
            spread = ""
            if len(ratios) >= 4:
                low, _, high = statistics.quantiles(ratios, n=4)
                spread = f", middle half {low:.2f}-{high:.2f}x"
            print(
                f"{what} ({top})/({bottom}): {statistics.median(t) / statistics.median(b):.2f}x;"
                f" per round: median {statistics.median(ratios):.2f}x{spread} ("
                + ", ".join(f"{r:.2f}x" for r in ratios)
                + ")"
            )

    versus("c", "b", "batching gain")
    versus("c", "a", "workflow worker vs plain consumer (aim: 0.70x)")
    versus("cW", "a", f"{partitions} partitions, worker processes vs plain consumer")
    versus("cW", "c", "worker processes vs one worker")
    versus("c", "ch", "its window vs half of it")
    versus("c", "c1", "two batches at once vs one at a time")
    versus("c", "c0", "now vs before the one-call append")
    if base and "c" in by_label and _label(_ceiling(1, True)) in by_label:
        batched = statistics.median(by_label["c"])
        alone = statistics.median(rates[_ceiling(1, True)])
        most = max(
            statistics.median(rates[_ceiling(c, True)])
            for c in (1, partitions + 1)
            if _ceiling(c, True) in rates
        )
        print(
            f"database ceiling (d) vs plain consumer (a): {alone / base:.2f}x with one batch at"
            f" a time, {most / base:.2f}x at best; the worker (c) reaches {batched / alone:.2f}x"
            f" of (d) with one connection, {batched / most:.2f}x of the best"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=1, help="case (cW): this many worker processes"
    )
    parser.add_argument(
        "--cases",
        default="",
        help="comma-separated cases to run (a,b,c,ch,c1,cW,c0,d,d3,rebuild); default: all",
    )
    args = parser.parse_args()
    only = {c.strip() for c in args.cases.split(",") if c.strip()}
    if args.workers < 1:
        parser.error("--workers is at least 1")
    if args.workers > 1 and args.partitions < 2:
        parser.error("--workers needs --partitions of 2 or more: one partition has one worker")
    asyncio.run(main(args.events, args.rounds, args.database, args.partitions, args.workers, only))
