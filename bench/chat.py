"""Chat fan-out across gateway instances: Rabbitry's per-room routing against the fan-out design
of python-socketio's ``AsyncAioPikaManager``, in one run, on one broker.

Both sides get the same 4 gateway instances (each with connections of its own), the same 1,000
clients in the same 200 rooms (5 per room, rooms and instances drawn with one seed), and the
same messages, sent by random clients; saturated, each client sends its messages back to back
with up to ``--window`` of them unanswered (Rabbitry's socket reader allows 8, python-socketio
runs each frame's handler as a task of its own); paced (``--rate``), one message every 1/rate s:

  (a) Rabbitry: each instance is a :class:`~rabbitry.chat.gateway.Gateway` (its exclusive queue
      bound with the keys of the rooms it hosts); a message is published to the dispatch
      exchange (room key) *and* to the persistence exchange, both confirmed, as the gateway
      does in production; each client is a ConnectedClient with its bounded send queue.
  (b) python-socketio: each instance is an ``AsyncServer`` with an ``AsyncAioPikaManager`` (a
      fanout exchange, one queue per instance, every message to every instance); each client
      is a participant of its room; ``server.emit(..., room=...)`` on the sender's instance.

The sockets themselves are left out on both sides (each recipient's send is a timestamp taken
where the frame would be written), so what differs is the design between the instances.
Reported: socket deliveries per second (first send to last receipt), p50/p99 latency from send
to receipt, and broker deliveries per published message next to the instances hosting a room.

Reported beside them: latency on the sender's instance and on the others, the process's CPU
and the broker's, so a run on a loaded machine shows whether it waited or worked.

With ``--lines``, Rabbitry's clients ask for several messages per frame (``lines=1``): a
recipient's pump writes what waits in its queue at once, one message a line.

Usage: python bench/chat.py [--layout random|spanning|local] [--clients C] [--rooms R]
       [--messages N] [--window W | --rate M] [--seed S] [--lines]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import socketio  # type: ignore[import-untyped]

from common import AMQP_URL, broker_cpu
from rabbitry.chat.client import ConnectedClient, Member
from rabbitry.chat.gateway import Gateway
from rabbitry.chat.http import SEND_WINDOW
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import Settings
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route

INSTANCES = 4
TENANT = "bench"
LAYOUTS = ("random", "spanning", "local")


@dataclass
class Layout:
    """Who is where: client -> (room, instance); the same for both designs."""

    seats: list[tuple[int, int]]
    sends: list[int]  # the client sending each message
    rooms: int

    @classmethod
    def draw(cls, messages: int, seed: int, clients: int, rooms: int, kind: str) -> Layout:
        rng = random.Random(seed)
        room_of = [i % rooms for i in range(clients)]  # the same number in each room
        rng.shuffle(room_of)
        seats: list[tuple[int, int]] = []
        placed = [0] * rooms
        for room in room_of:
            if kind == "spanning":  # member k of a room on instance k mod 4
                instance = placed[room] % INSTANCES
            elif kind == "local":  # the whole room on one instance
                instance = room % INSTANCES
            else:
                instance = rng.randrange(INSTANCES)
            placed[room] += 1
            seats.append((room, instance))
        return cls(seats, [rng.randrange(clients) for _ in range(messages)], rooms)

    def members(self, room: int) -> list[int]:
        return [c for c, (r, _) in enumerate(self.seats) if r == room]

    def expected_receipts(self) -> int:
        sizes = {room: len(self.members(room)) for room in range(self.rooms)}
        return sum(sizes[self.seats[c][0]] for c in self.sends)

    def copies(self) -> int:
        """The copies the broker routes to instances: one per instance hosting the room."""
        per_room = {
            room: len({self.seats[c][1] for c in self.members(room)}) for room in range(self.rooms)
        }
        return sum(per_room[self.seats[c][0]] for c in self.sends)

    def hosting(self) -> float:
        """Instances hosting the room, averaged over the messages sent."""
        per_room = {
            room: len({self.seats[c][1] for c in self.members(room)}) for room in range(self.rooms)
        }
        return statistics.fmean(per_room[self.seats[c][0]] for c in self.sends)


@dataclass
class Tally:
    expected: int
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    confirmed: list[float] = field(default_factory=list)  # send -> publish confirmed
    routed: dict[str, float] = field(default_factory=dict)  # send -> first queue delivery
    origin: dict[str, int] = field(default_factory=dict)  # the sender's instance
    local: list[float] = field(default_factory=list)  # receipts on the sender's instance
    remote: list[float] = field(default_factory=list)  # receipts on the other instances
    cpu: float = 0.0  # this process's CPU seconds while it sent and received
    settled: float = 0.0  # when the last copy the broker routed to an instance was consumed
    broker_cpu: float = 0.0  # the broker's, meanwhile

    def received(self, message_id: str, instance: int) -> None:
        now = time.perf_counter()
        latency = now - self.sent_at[message_id]
        self.latencies.append(latency)
        near = self.origin.get(message_id) == instance
        (self.local if near else self.remote).append(latency)
        self.last = now
        if len(self.latencies) >= self.expected:
            self.done.set()


@dataclass
class Result:
    name: str
    seconds: float
    receipts: int
    p50_ms: float
    p99_ms: float
    broker_deliveries: int
    messages: int
    tally: Tally | None = None

    @property
    def missing(self) -> str:
        expected = self.tally.expected if self.tally else self.receipts
        return f"; {expected - self.receipts:,} never arrived" if expected > self.receipts else ""

    @property
    def rate(self) -> float:
        return self.receipts / self.seconds

    def show(self) -> None:
        print(
            f"  {self.name:<16} {self.rate:>10,.0f} deliveries/s   p50 {self.p50_ms:7.1f} ms"
            f"   p99 {self.p99_ms:7.1f} ms   broker deliveries/message"
            f" {self.broker_deliveries / self.messages:.2f}   ({self.receipts:,} in"
            f" {self.seconds:.2f} s{self.missing})"
        )


def _result(name: str, tally: Tally, broker_deliveries: int, messages: int) -> Result:
    ordered = sorted(tally.latencies)
    return Result(
        name,
        tally.last - tally.first,
        len(ordered),
        1000 * ordered[len(ordered) // 2],
        1000 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        broker_deliveries,
        messages,
        tally,
    )


async def _drive(
    layout: Layout,
    window: int,
    send: Any,
    tally: Tally,
    rate: float | None,
    settled: Callable[[], bool],
) -> None:
    """Send every message of ``layout``; ``send(client)`` starts one at once and returns what
    to await for its outcome (the server's answer to that socket's frame). Then wait for
    the last socket write, and for ``settled()``: every copy the broker routed to an
    instance consumed (python-socketio's are often still queued at the last write)."""
    cpu, broker = time.process_time(), broker_cpu()
    tally.first = time.perf_counter()
    if rate is None:
        # Saturated: every client sends its messages back to back, with up to ``window`` of
        # them unanswered, as Rabbitry's socket reader lets a client do (SEND_WINDOW), the
        # same clients for both designs.
        own: dict[int, list[int]] = {}
        for client in layout.sends:
            own.setdefault(client, []).append(client)

        async def one_client(messages: list[int]) -> None:
            sending: collections.deque[Any] = collections.deque()
            for client in messages:
                sending.append(send(client))
                while sending and (sending[0].done() or len(sending) >= window):
                    await sending.popleft()
            for outcome in sending:
                await outcome

        await asyncio.gather(*(one_client(m) for m in own.values()))
    else:  # paced: the n-th send starts at n / rate seconds, whatever the others do
        outcomes = []
        for n, client in enumerate(layout.sends):
            delay = tally.first + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            outcomes.append(send(client))
        await asyncio.gather(*outcomes)
    # What has not arrived a minute after the last send is reported as missing (python-socketio
    # falls that far behind with rooms spanning the instances), not waited for.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.done.wait(), timeout=60)
    deadline = time.perf_counter() + 60
    while not settled() and time.perf_counter() < deadline:  # noqa: ASYNC110 (counters: no event)
        await asyncio.sleep(0.01)
    tally.settled = time.perf_counter()
    tally.cpu = time.process_time() - cpu
    tally.broker_cpu = broker_cpu() - broker


# --- (a) Rabbitry --------------------------------------------------------------------------


async def run_rabbitry(
    layout: Layout,
    window: int,
    directory: Path,
    rate: float | None = None,
    lines: bool = False,
) -> Result:
    namespace = "b" + uuid.uuid4().hex[:10]
    settings = Settings(namespace=namespace, amqp_url=AMQP_URL, data_dir=directory)
    tally = Tally(layout.expected_receipts())
    try:
        async with AsyncExitStack() as stack:
            gateways = []
            for index in range(INSTANCES):
                publisher = await stack.enter_async_context(
                    Publisher(settings.amqp, name=f"{namespace}-bench-{index}")
                )
                gateway = await stack.enter_async_context(
                    Gateway(settings, publisher, instance=f"i{index}").running()
                )
                await asyncio.wait_for(gateway.inbox.connected.wait(), 20)
                # The publisher connects on its first message: not inside the measurement,
                # where thousands of first sends would wait on one connect.
                layout_names = ChatLayout(namespace)
                warm = Message(type="bench.warmup", payload={})
                warmed = await publisher.publish(warm, Route("", layout_names.history_queue))
                assert warmed.ok, warmed
                gateways.append(gateway)
            clients: list[ConnectedClient] = []
            pumps = []
            for number, (room, instance) in enumerate(layout.seats):

                async def record(frame: str, instance: int = instance) -> None:
                    # The id is the first field of every message: no JSON parse on the clock.
                    # (With --lines a frame may carry several, one a line: each counts once.)
                    if lines:
                        for line in frame.split("\n"):
                            tally.received(line[7:43], instance)
                    else:
                        tally.received(frame[7:43], instance)

                async def close(code: int, reason: str) -> None:
                    return None

                member = Member(TENANT, str(number), f"user{number}", f"s{number}")
                # (lines only when asked: a before/after run may use code without it)
                options: dict[str, Any] = {"lines": True} if lines else {}
                client = ConnectedClient(
                    member, f"room{room}", record, close, queue_size=10_000, **options
                )
                await gateways[instance].manager.join(client)
                clients.append(client)
                pumps.append(asyncio.create_task(client.pump()))
            # Manager.join returned once each room was bound: every binding is in place.
            for index, gateway in enumerate(gateways):
                _time_sends(gateway, tally, index)
                _time_routing(gateway, tally)
            counter = iter(range(10**9))

            def send(number: int) -> asyncio.Future[Any]:
                gateway = gateways[layout.seats[number][1]]
                started = time.perf_counter()
                outcome = gateway.submit(clients[number], f"message {next(counter)}")

                def confirmed(future: asyncio.Future[Any]) -> None:
                    tally.confirmed.append(time.perf_counter() - started)
                    assert future.result().ok, future.result()

                outcome.add_done_callback(confirmed)
                return outcome

            history = ChatLayout(namespace).history_queue
            before = await _queue_depth(history)
            copies = layout.copies()

            def settled() -> bool:
                return sum(g.inbox.delivered for g in gateways) >= copies

            await _drive(layout, window, send, tally, rate, settled)
            # The copies the broker routed: one per hosting instance's queue (delivered), one
            # to the history queue (left there: no writer runs, to keep its work out of the
            # measurement).
            deliveries = sum(g.inbox.delivered for g in gateways)
            deliveries += await _queue_depth(history) - before
            for client in clients:
                client.disconnect(1000, "")
            await asyncio.gather(*pumps)
    finally:
        await _delete_prefix(namespace)
    return _result("rabbitry", tally, deliveries, len(layout.sends))


def _time_routing(gateway: Gateway, tally: Tally) -> None:
    """Note when each message first comes out of an instance's queue (send -> broker -> here;
    the sender's own instance drops its copy undecoded, but it is counted here first)."""
    on_message = gateway.inbox._on_message

    def stamped(message: Any) -> None:
        if message.id not in tally.routed:
            tally.routed[message.id] = time.perf_counter() - tally.sent_at[message.id]
        on_message(message)

    gateway.inbox._on_message = stamped
    skip = getattr(gateway.inbox, "_skip", None)
    if skip is None:  # (code from before echoes were skipped undecoded: a before/after run)
        return

    def stamped_echo(message_id: str | None, headers: Any) -> bool:
        if message_id is not None and message_id not in tally.routed:
            tally.routed[message_id] = time.perf_counter() - tally.sent_at[message_id]
        return bool(skip(message_id, headers))

    gateway.inbox._skip = stamped_echo


async def _queue_depth(queue: str) -> int:
    for _ in range(50):  # the broker's counts lag a little behind: wait until they settle
        rows = await asyncio.to_thread(_rabbitmqctl, "list_queues", "name", "messages")
        depth = next((int(r[1]) for r in rows if r[0] == queue), 0)
        await asyncio.sleep(0.2)
        rows = await asyncio.to_thread(_rabbitmqctl, "list_queues", "name", "messages")
        if next((int(r[1]) for r in rows if r[0] == queue), 0) == depth:
            return depth
    return depth


def _time_sends(gateway: Gateway, tally: Tally, instance: int) -> None:
    """Note the send time of every message as the gateway makes its id (the first thing
    ``Gateway.submit`` does, before publishing)."""
    ids = gateway._ids
    make = ids.new

    def stamped(now_ms: int | None = None) -> str:
        message_id = make(now_ms)
        tally.sent_at[message_id] = time.perf_counter()
        tally.origin[message_id] = instance
        return message_id

    ids.new = stamped  # type: ignore[method-assign]


# --- (b) python-socketio's AsyncAioPikaManager ---------------------------------------------


async def run_socketio(layout: Layout, window: int, rate: float | None = None) -> Result:
    channel = "b" + uuid.uuid4().hex[:10] + ".socketio"
    tally = Tally(layout.expected_receipts())
    handled = [0] * INSTANCES
    servers = []
    for index in range(INSTANCES):
        manager = socketio.AsyncAioPikaManager(AMQP_URL, channel=channel)
        server = socketio.AsyncServer(client_manager=manager, async_mode="asgi")

        async def deliver(eio_sid: str, pkt: Any, index: int = index) -> None:
            # compact JSON: no spaces
            tally.received(pkt.data.split('"id":"', 1)[1][:36], index)

        server._send_eio_packet = deliver
        original = manager._handle_emit

        async def counted(message: Any, index: int = index, original: Any = original) -> None:
            handled[index] += 1
            await original(message)

        manager._handle_emit = counted
        manager.initialize()
        servers.append(server)
    participants: list[str] = []
    for number, (room, instance) in enumerate(layout.seats):
        manager = servers[instance].manager
        sid = await manager.connect(f"eio{number}", "/")
        await manager.enter_room(sid, "/", f"room{room}")
        participants.append(sid)
    # Each instance's listener declares and binds its queue on its own, in the background.
    await _wait_bound(channel, INSTANCES)
    counter = iter(range(10**9))

    def send(number: int) -> asyncio.Future[Any]:
        # A task per frame, as python-socketio runs its event handlers (async_handlers).
        room, instance = layout.seats[number]
        message_id = str(uuid.uuid4())
        tally.sent_at[message_id] = time.perf_counter()
        tally.origin[message_id] = instance
        data = {"id": message_id, "room": f"room{room}", "text": f"message {next(counter)}"}
        emitting: asyncio.Future[Any] = asyncio.ensure_future(
            servers[instance].emit("message", data, room=f"room{room}")
        )
        return emitting

    try:
        # Each instance's queue gets every message; its own copy is skipped unhandled.
        await _drive(
            layout,
            window,
            send,
            tally,
            rate,
            lambda: sum(handled) >= (INSTANCES - 1) * len(layout.sends),
        )
    finally:
        for server in servers:
            manager = server.manager
            with contextlib.suppress(Exception):
                if manager.publisher_connection is not None:
                    await manager.publisher_connection.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and "_thread" in repr(task.get_coro()):
                task.cancel()
        await asyncio.sleep(0.2)
        await _delete_socketio(channel)
    return _result("python-socketio", tally, sum(handled), len(layout.sends))


# --- cleanup -------------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> list[list[str]]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args, "--no-table-headers"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line.split("\t") for line in out.splitlines() if line.strip()]


async def _delete_names(queues: Sequence[str], exchanges: Sequence[str]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)
        for name in exchanges:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(name)


async def _delete_prefix(prefix: str) -> None:
    queues = [r[0] for r in await asyncio.to_thread(_rabbitmqctl, "list_queues", "name")]
    exchanges = [r[0] for r in await asyncio.to_thread(_rabbitmqctl, "list_exchanges", "name")]
    await _delete_names(
        [q for q in queues if q.startswith(prefix)], [e for e in exchanges if e.startswith(prefix)]
    )


async def _wait_bound(exchange: str, queues: int) -> None:
    for _ in range(200):
        rows = await asyncio.to_thread(_rabbitmqctl, "list_bindings", "source_name")
        if sum(1 for r in rows if r[0] == exchange) >= queues:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the socketio instances did not bind to {exchange}")


async def _delete_socketio(channel: str) -> None:
    # Its queues are server-named (amq.gen-…): find them by their binding to the channel.
    rows = await asyncio.to_thread(_rabbitmqctl, "list_bindings", "source_name", "destination_name")
    await _delete_names([r[1] for r in rows if r[0] == channel], [channel])


def _p50_ms(values: Sequence[float]) -> str:
    return f"{1000 * sorted(values)[len(values) // 2]:.1f} ms" if values else "-"


def _per_delivery_us(result: Result) -> float:
    """The process's CPU time over the run per socket delivery: what holds under load, where
    wall-clock rates do not (both designs' instances and clients share this process)."""
    assert result.tally is not None
    return 1e6 * result.tally.cpu / max(1, result.receipts)


def _where(result: Result) -> str:
    tally = result.tally
    assert tally is not None
    until = tally.settled - tally.first
    busy = f"process CPU {tally.cpu / until:.0%}"
    return (
        f"process CPU {_per_delivery_us(result):.1f} µs per delivery;"
        f" {result.receipts / until:,.0f} deliveries/s until every broker copy was consumed"
        f" ({until:.2f} s); p50 on the sender's instance {_p50_ms(tally.local)}, on the others"
        f" {_p50_ms(tally.remote)}; {busy} of one core, broker CPU"
        f" {tally.broker_cpu / until:.0%} (all its users)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument(
        "--window",
        type=int,
        default=SEND_WINDOW,
        help="saturated: a client's messages unanswered at once (both designs)",
    )
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--layout", choices=LAYOUTS, default="random")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--rate", type=float, default=None, help="messages a second (paced)")
    parser.add_argument(
        "--lines",
        action="store_true",
        help="Rabbitry's clients ask for lines=1 (what waits in a socket's queue in one frame)",
    )
    args = parser.parse_args()
    if args.clients < args.rooms or args.rooms < 1:
        parser.error("--clients must be at least --rooms, and --rooms at least 1")
    layout = Layout.draw(args.messages, args.seed, args.clients, args.rooms, args.layout)
    pace = f"paced at {args.rate:g}/s" if args.rate else f"saturated, window {args.window}"
    pace += "; Rabbitry's clients with lines=1" if args.lines else ""
    print(
        f"{INSTANCES} instances, {args.clients:,} clients in {args.rooms} rooms ({args.layout}),"
        f" {args.messages:,} messages ({layout.expected_receipts():,} socket deliveries), {pace};"
        f" a room is on {layout.hosting():.2f} instances on average;"
        f" load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory() as directory:
        rabbitry = await run_rabbitry(
            layout, args.window, Path(directory), args.rate, lines=args.lines
        )
        tally = rabbitry.tally
    baseline = await run_socketio(layout, args.window, args.rate)
    for result in (rabbitry, baseline):
        result.show()
    assert tally is not None
    print(
        f"  rabbitry, where the time goes (p50): send -> both publishes confirmed"
        f" {_p50_ms(tally.confirmed)}; send -> the broker's first copy out of a queue"
        f" {_p50_ms(list(tally.routed.values()))}; send -> socket write {rabbitry.p50_ms:.1f} ms"
    )
    for result in (rabbitry, baseline):
        print(f"  {result.name}: {_where(result)}")
    assert baseline.tally is not None
    settled = (baseline.tally.settled - baseline.tally.first) / (tally.settled - tally.first)
    print(
        f"  ratio: {_per_delivery_us(baseline) / _per_delivery_us(rabbitry):.2f}x less process"
        f" CPU per delivery;"
        f" {rabbitry.rate / baseline.rate:.2f}x the deliveries per second"
        f" ({settled:.2f}x counting until the broker's copies are consumed);"
        f" p50 {baseline.p50_ms / rabbitry.p50_ms:.2f}x lower;"
        f" broker deliveries per message {rabbitry.broker_deliveries / rabbitry.messages:.2f}"
        f" vs {baseline.broker_deliveries / baseline.messages:.2f}"
        f" (instances hosting the room: {layout.hosting():.2f}, + 1 for the history;"
        f" all instances: {INSTANCES}); load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
