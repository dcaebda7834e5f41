"""Rabbitry against the broker's own ceiling and against aio-pika, in one run, on one broker.

The ceiling is a socket-level probe: the same RoadRunner-format messages (the seven ``rr_*``
headers, ``message_id``, ``timestamp``, a 256-byte JSON body), encoded into frames before the
clock starts, written a window of 1000 at a time with a wait for the broker's confirms, as a
client that spends no time of its own would. Its consumer parses just enough to ack (one
``multiple`` ack per read). Every case is printed as a ratio to that ceiling and to aio-pika.

Cases, each on a fresh durable classic queue, persistent messages, medians of interleaved
rounds (a shared 2-core machine varies 10-20 % from run to run):

  publish: ceiling | aio-pika (gathered windows of 1000) | Rabbitry ``publish_many`` (windows
           of 1000) | Rabbitry concurrent ``publish()`` (1000 tasks per window)
  consume: ceiling (one ``multiple`` ack per read) | the probe acking each delivery on its own |
           aio-pika (manual ack, prefetch 1000) | Rabbitry ``Consumer`` (prefetch 1000)
  latency: publish -> handler at a paced 1,000 msg/s, p50 and p99, Rabbitry and aio-pika

Usage: python bench/ceiling.py [--messages 20000] [--rounds 3] [--latency-seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aio_pika
from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp.common import FieldTable

from rabbitry.amqp import wire
from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link
from rabbitry.amqp.properties import encode_properties
from rabbitry.messaging.consumer import Consumer, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route, to_outgoing
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.topology import Queue, Topology

URL = "amqp://guest:guest@127.0.0.1:5672/"
WINDOW = 1000
PREFETCH = 1000
PAYLOAD = {"id": 0, "text": "x" * 220}  # 256 bytes of compact JSON with the id
SETTINGS = AmqpSettings(url=URL, prefetch=PREFETCH, publish_timeout=60)


def message(n: int = 0) -> Message:
    return Message(type="bench", payload={**PAYLOAD, "id": n})


F = TypeVar("F")


# --- the socket-level probe ------------------------------------------------------------------


class Probe:
    """A bare AMQP connection on asyncio streams: handshake with pamqp, then raw frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""

    @classmethod
    async def open(cls) -> Probe:
        reader, writer = await asyncio.open_connection("127.0.0.1", 5672)
        probe = cls(reader, writer)
        writer.write(wire.PROTOCOL_HEADER)
        await probe.expect(commands.Connection.Start)
        response = "\0guest\0guest"
        props: FieldTable = {"connection_name": "bench-ceiling"}
        probe.send(0, commands.Connection.StartOk(props, "PLAIN", response, "en_US"))
        tune = await probe.expect(commands.Connection.Tune)
        probe.send(0, commands.Connection.TuneOk(tune.channel_max, tune.frame_max, 0))
        probe.send(0, commands.Connection.Open("/"))
        await probe.expect(commands.Connection.OpenOk)
        probe.send(1, commands.Channel.Open())
        await probe.expect(commands.Channel.OpenOk)
        return probe

    def send(self, channel: int, method: object) -> None:
        self.writer.write(pamqp_frame.marshal(method, channel))  # type: ignore[arg-type]

    async def expect(self, kind: type[F]) -> F:
        while True:
            while len(self.buffer) >= 8:
                size = struct.unpack_from(">I", self.buffer, 3)[0]
                if len(self.buffer) < size + 8:
                    break
                used, _, value = pamqp_frame.unmarshal(self.buffer)
                self.buffer = self.buffer[used:]
                if isinstance(value, kind):
                    return value
            self.buffer += await self.reader.read(65536)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def frames_of(queue: str, count: int) -> list[bytes]:
    """Each window's publish frames, RoadRunner-format, encoded before the clock starts."""
    windows: list[bytes] = []
    for start in range(0, count, WINDOW):
        parts: list[bytes] = []
        for n in range(start, min(start + WINDOW, count)):
            outgoing = to_outgoing(message(n), Route("", queue))
            parts += wire.encode_publish(
                1,
                "",
                queue,
                outgoing.body,
                encode_properties(outgoing.properties),
                mandatory=True,
                frame_max=131072,
            )
        windows.append(b"".join(parts))
    return windows


_ACK = struct.Struct(">BHIHHQB")


async def probe_publish(queue: str, count: int) -> float:
    windows = frames_of(queue, count)
    probe = await Probe.open()
    probe.send(1, commands.Confirm.Select())
    await probe.expect(commands.Confirm.SelectOk)
    start = time.perf_counter()
    sent = 0
    for window in windows:
        sent += min(WINDOW, count - sent)
        probe.writer.write(window)
        await _acked(probe, sent)
    elapsed = time.perf_counter() - start
    await probe.close()
    return count / elapsed


async def _acked(probe: Probe, tag: int) -> None:
    """Read until the broker has confirmed every tag up to ``tag`` (acks only: no returns)."""
    buffer, confirmed = probe.buffer, 0
    while confirmed < tag:
        buffer += await probe.reader.read(65536)
        while len(buffer) >= 21:
            _, _, _, klass, method, delivery_tag, _ = _ACK.unpack_from(buffer)
            size = struct.unpack_from(">I", buffer, 3)[0]
            if (klass, method) == (60, 80):
                confirmed = max(confirmed, delivery_tag)
            buffer = buffer[size + 8 :]
    probe.buffer = buffer


async def probe_consume(queue: str, count: int) -> float:
    """The broker's floor: one ``multiple`` ack per read."""
    return await _probe_consume(queue, count, each=False)


async def probe_consume_each(queue: str, count: int) -> float:
    """One ack frame per delivery, as a client that does not fold its acks."""
    return await _probe_consume(queue, count, each=True)


async def _probe_consume(queue: str, count: int, *, each: bool) -> float:
    probe = await Probe.open()
    probe.send(1, commands.Basic.Qos(prefetch_count=PREFETCH))
    await probe.expect(commands.Basic.QosOk)
    probe.send(1, commands.Basic.Consume(queue=queue, consumer_tag="ceiling"))
    await probe.expect(commands.Basic.ConsumeOk)
    received, start = 0, 0.0
    buffer, view = probe.buffer, b""
    while received < count:
        data = await probe.reader.read(262144)
        if not start:
            start = time.perf_counter()
        buffer += data
        view, pos, tags = buffer, 0, []
        while len(view) - pos >= 8:
            size = struct.unpack_from(">I", view, pos + 3)[0]
            if len(view) - pos < size + 8:
                break
            if view[pos] == 1 and view[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
                tag_at = pos + 12 + view[pos + 11]
                tags.append(struct.unpack_from(">Q", view, tag_at)[0])
                received += 1
            pos += size + 8
        buffer = view[pos:]
        if tags and each:
            probe.writer.write(b"".join(wire.encode_ack(1, tag) for tag in tags))
        elif tags:
            probe.writer.write(wire.encode_ack(1, tags[-1], multiple=True))
    elapsed = time.perf_counter() - start
    await probe.close()
    return count / elapsed


# --- aio-pika ----------------------------------------------------------------------------------


def aio_pika_message(n: int) -> aio_pika.Message:
    outgoing = to_outgoing(message(n), Route("", ""))
    props = outgoing.properties
    return aio_pika.Message(
        outgoing.body,
        # aio-pika picks the field types itself, and cannot write bytes: rr_headers as text.
        headers={
            k: v.decode() if isinstance(v, bytes) else v for k, v in (props.headers or {}).items()
        },
        content_type=props.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=props.message_id,
        timestamp=props.timestamp,
    )


async def aio_pika_publish(queue: str, count: int) -> float:
    connection = await aio_pika.connect(URL)
    channel = await connection.channel(publisher_confirms=True)
    exchange = channel.default_exchange
    start = time.perf_counter()
    for offset in range(0, count, WINDOW):
        await asyncio.gather(
            *(
                exchange.publish(aio_pika_message(n), routing_key=queue, mandatory=True)
                for n in range(offset, min(offset + WINDOW, count))
            )
        )
    elapsed = time.perf_counter() - start
    await connection.close()
    return count / elapsed


async def aio_pika_consume(queue: str, count: int) -> float:
    connection = await aio_pika.connect(URL)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    declared = await channel.get_queue(queue, ensure=False)
    done = asyncio.Event()
    seen, start = 0, 0.0

    async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal seen, start
        if not seen:
            start = time.perf_counter()
        await incoming.ack()
        seen += 1
        if seen == count:
            done.set()

    await declared.consume(on_message)
    await done.wait()
    elapsed = time.perf_counter() - start
    await connection.close()
    return count / elapsed


# --- Rabbitry ------------------------------------------------------------------------------------


async def rabbitry_publish_many(queue: str, count: int) -> float:
    route = Route("", queue)
    async with Publisher(SETTINGS, name="bench") as publisher:
        await publisher.publish(message(), route)  # connect before the clock starts
        start = time.perf_counter()
        for offset in range(0, count, WINDOW):
            batch = [(message(n), route) for n in range(offset, min(offset + WINDOW, count))]
            results = await publisher.publish_many(batch)
            if not all(r.ok for r in results):
                raise SystemExit(f"publish failed: {results[0]}")
        elapsed = time.perf_counter() - start
    return count / elapsed


async def rabbitry_publish_concurrent(queue: str, count: int) -> float:
    route = Route("", queue)
    async with Publisher(SETTINGS, name="bench") as publisher:
        await publisher.publish(message(), route)
        start = time.perf_counter()
        for offset in range(0, count, WINDOW):
            window = range(offset, min(offset + WINDOW, count))
            results = await asyncio.gather(*(publisher.publish(message(n), route) for n in window))
            if not all(r.ok for r in results):
                raise SystemExit(f"publish failed: {results[0]}")
        elapsed = time.perf_counter() - start
    return count / elapsed


async def rabbitry_consume(queue: str, count: int) -> float:
    link = await Link.connect(URL, name="bench-consumer")
    done = asyncio.Event()
    seen, start = 0, 0.0

    async def handler(_: Message) -> None:
        nonlocal seen, start
        if not seen:
            start = time.perf_counter()
        seen += 1
        if seen == count:
            done.set()

    subscription = Subscription(queue, default=handler, strict=False)
    consumer = Consumer(SETTINGS, subscription, link, RetryPolicy())
    await consumer.start()
    await done.wait()
    elapsed = time.perf_counter() - start
    await consumer.stop(timeout=5)
    await link.close()
    return count / elapsed


async def fill(queue: str, count: int) -> None:
    probe = await Probe.open()
    probe.send(1, commands.Confirm.Select())
    await probe.expect(commands.Confirm.SelectOk)
    sent = 0
    for window in frames_of(queue, count):
        sent += min(WINDOW, count - sent)
        probe.writer.write(window)
        await _acked(probe, sent)
    await probe.close()


# --- latency at a paced rate ---------------------------------------------------------------------


async def _paced(count: int, rate: float, send: Callable[[int], None]) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(count):
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        send(n)


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000


async def rabbitry_latency(queue: str, count: int, rate: float) -> tuple[float, float]:
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()

    async def handler(received: Message) -> None:
        latencies.append(time.perf_counter() - sent_at[received.payload["id"]])
        if len(latencies) == count:
            done.set()

    link = await Link.connect(URL, name="bench-latency-consumer")
    subscription = Subscription(queue, default=handler, strict=False)
    consumer = Consumer(SETTINGS, subscription, link, RetryPolicy())
    await consumer.start()
    route = Route("", queue)
    tasks: set[asyncio.Task[object]] = set()
    async with Publisher(SETTINGS, name="bench-latency") as publisher:
        await publisher.publish(message(-1), Route("", f"{queue}.warm-up-nowhere"))

        def send(n: int) -> None:
            sent_at[n] = time.perf_counter()
            task = asyncio.ensure_future(publisher.publish(message(n), route))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await _paced(count, rate, send)
        await asyncio.wait_for(done.wait(), 60)
        await asyncio.gather(*tasks)  # the last confirms, before the connection closes
    await consumer.stop(timeout=5)
    await link.close()
    return _percentiles(latencies)


async def aio_pika_latency(queue: str, count: int, rate: float) -> tuple[float, float]:
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    connection = await aio_pika.connect(URL)
    consuming = await connection.channel()
    await consuming.set_qos(prefetch_count=PREFETCH)
    declared = await consuming.get_queue(queue, ensure=False)

    async def on_message(incoming: aio_pika.abc.AbstractIncomingMessage) -> None:
        import json

        n = json.loads(incoming.body)["id"]
        latencies.append(time.perf_counter() - sent_at[n])
        await incoming.ack()
        if len(latencies) == count:
            done.set()

    await declared.consume(on_message)
    publishing = await connection.channel(publisher_confirms=True)
    exchange = publishing.default_exchange
    tasks: set[asyncio.Task[object]] = set()

    def send(n: int) -> None:
        sent_at[n] = time.perf_counter()
        task = asyncio.ensure_future(
            exchange.publish(aio_pika_message(n), routing_key=queue, mandatory=True)
        )
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await _paced(count, rate, send)
    await asyncio.wait_for(done.wait(), 60)
    await asyncio.gather(*tasks)
    await connection.close()
    return _percentiles(latencies)


# --- the run -------------------------------------------------------------------------------------

Case = Callable[[str, int], Awaitable[float]]

PUBLISH: dict[str, Case] = {
    "ceiling (socket probe)": probe_publish,
    "aio-pika 10.2": aio_pika_publish,
    "Rabbitry publish_many": rabbitry_publish_many,
    "Rabbitry concurrent publish()": rabbitry_publish_concurrent,
}
CONSUME: dict[str, Case] = {
    "ceiling (socket probe)": probe_consume,
    "probe acking each delivery": probe_consume_each,
    "aio-pika 10.2": aio_pika_consume,
    "Rabbitry Consumer": rabbitry_consume,
}


async def main(count: int, rounds: int, latency_seconds: float) -> None:
    queue = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    topology = Topology.of(queues=[Queue(queue)])
    publish: dict[str, list[float]] = {name: [] for name in PUBLISH}
    consume: dict[str, list[float]] = {name: [] for name in CONSUME}
    latency: dict[str, list[tuple[float, float]]] = {"aio-pika 10.2": [], "Rabbitry": []}
    async with await Declarer.connect(URL, name="bench") as declarer:
        await declarer.declare(topology)
        try:
            for round_ in range(rounds):
                for name, case in PUBLISH.items():
                    await declarer.purge(queue)
                    publish[name].append(await case(queue, count))
                    print(
                        f"round {round_ + 1} publish {name}: {publish[name][-1]:,.0f}/s", flush=True
                    )
                for name, case in CONSUME.items():
                    await declarer.purge(queue)
                    await fill(queue, count)
                    consume[name].append(await case(queue, count))
                    print(
                        f"round {round_ + 1} consume {name}: {consume[name][-1]:,.0f}/s", flush=True
                    )
                paced = int(latency_seconds * 1000)
                for name, run in (
                    ("aio-pika 10.2", aio_pika_latency),
                    ("Rabbitry", rabbitry_latency),
                ):
                    await declarer.purge(queue)
                    latency[name].append(await run(queue, paced, 1000.0))
                    p50, p99 = latency[name][-1]
                    print(
                        f"round {round_ + 1} latency {name}: p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                        flush=True,
                    )
        finally:
            await declarer.delete(topology)
    # Ratios are taken within each round (against that round's ceiling and aio-pika), then
    # their median: the load of a shared machine drifts between rounds more than within one.
    print(f"\n{count:,} messages x {rounds} rounds, RoadRunner format, medians:")
    for title, figures in (("publish", publish), ("consume", consume)):
        ceilings, baselines = figures["ceiling (socket probe)"], figures["aio-pika 10.2"]
        print(f"  {title:<8}{'msg/s':>40}{'vs ceiling':>12}{'vs aio-pika':>13}")
        for name, values in figures.items():
            to_ceiling = statistics.median(v / c for v, c in zip(values, ceilings, strict=True))
            to_baseline = statistics.median(v / b for v, b in zip(values, baselines, strict=True))
            print(
                f"    {name:<34}{statistics.median(values):>10,.0f}"
                f"{to_ceiling:>11.2f}x{to_baseline:>12.2f}x"
            )
    paced = int(latency_seconds * 1000)
    print(f"  latency at a paced 1,000 msg/s, publish -> handler ({paced:,} messages):")
    for name, rounds_ms in latency.items():
        p50 = statistics.median(p[0] for p in rounds_ms)
        p99 = statistics.median(p[1] for p in rounds_ms)
        print(f"    {name:<34} p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.rounds, args.latency_seconds))
