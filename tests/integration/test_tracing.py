"""Traces across RabbitMQ: the Tracing middleware's publish and process spans, and the retry
and dead-letter copies, recorded by the OpenTelemetry SDK's in-memory exporter from a real
broker. Each test has a tracer provider of its own (given to ``Tracing``), so nothing here
touches the process's global one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from conftest import BrokerProbe, WorkerRunner
from helpers import RecordingFallback, eventually_true
from rabbitry import (
    Declarer,
    Message,
    Publisher,
    Reject,
    Retry,
    Route,
    Subscription,
    Tracing,
    work_queue,
)
from rabbitry.config import Settings


@dataclass
class Traces:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


@pytest.fixture
def traces() -> Iterator[Traces]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield Traces(provider, exporter)
    finally:
        provider.shutdown()


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


async def test_a_consumed_message_is_processed_in_a_child_span_of_its_publish(
    settings: Settings, run_worker: WorkerRunner, broker: BrokerProbe, traces: Traces
) -> None:
    queue = f"{settings.namespace}.orders"
    tracing = Tracing(traces.provider)
    seen: list[tuple[Message, trace.SpanContext]] = []
    done = asyncio.Event()

    async def handle(message: Message) -> None:
        seen.append((message, trace.get_current_span().get_span_context()))
        done.set()

    topology = work_queue(queue, policy=settings.retry)
    async with (
        run_worker([Subscription(queue, {"order.placed": handle})], topology, middleware=[tracing]),
        Publisher(settings.amqp, middleware=[tracing]) as publisher,
    ):
        sent = Message("order.placed", {"n": 1}, tenant="acme", correlation_id="c-1")
        result = await publisher.publish(sent, Route("", queue))
        assert result.ok
        await asyncio.wait_for(done.wait(), timeout=30)
        await eventually_true(
            lambda: _has(traces, f"process {queue}"), timeout=30, what="the process span"
        )

    (publish,) = traces.named(f"publish {queue}")
    (process,) = traces.named(f"process {queue}")
    assert publish.kind is SpanKind.PRODUCER and process.kind is SpanKind.CONSUMER
    assert parent_of(publish) is None
    assert parent_of(process) == span_id(publish)
    assert trace_id(process) == trace_id(publish)
    assert dict(publish.attributes or {}) == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "",  # the default exchange
        "messaging.rabbitmq.destination.routing_key": queue,
        "messaging.message.id": sent.id,
        "messaging.message.conversation_id": "c-1",
        "rabbitry.message.type": "order.placed",
        "rabbitry.tenant": "acme",
        "rabbitry.publish.status": "published",
    }
    attributes = dict(process.attributes or {})
    assert attributes["messaging.system"] == "rabbitmq"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.subscription.name"] == queue
    assert attributes["messaging.message.id"] == sent.id
    assert attributes["messaging.message.body.size"] == len(b'{"n":1}')
    assert attributes["rabbitry.message.attempt"] == 0
    assert process.status.status_code is StatusCode.UNSET
    # The handler runs inside the process span, and the message carried the W3C context.
    ((message, current),) = seen
    assert current.span_id == span_id(process)
    assert message.traceparent is not None
    assert message.traceparent.startswith(f"00-{trace_id(publish):032x}-{span_id(publish):016x}-")


async def test_a_retry_is_a_span_and_the_next_attempt_its_child(
    settings: Settings, run_worker: WorkerRunner, broker: BrokerProbe, traces: Traces
) -> None:
    queue = f"{settings.namespace}.orders"
    tracing = Tracing(traces.provider)
    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(message: Message) -> None:
        attempts.append(message.attempt)
        if message.attempt == 0:
            raise Retry(reason="stock service busy")
        done.set()

    topology = work_queue(queue, policy=settings.retry)
    async with (
        run_worker([Subscription(queue, {"order.placed": handle})], topology, middleware=[tracing]),
        Publisher(settings.amqp, middleware=[tracing]) as publisher,
    ):
        assert (await publisher.publish(Message("order.placed", {}), Route("", queue))).ok
        await asyncio.wait_for(done.wait(), timeout=60)
        await eventually_true(
            lambda: _count(traces, f"process {queue}", 2), timeout=30, what="two process spans"
        )

    assert attempts == [0, 1]
    (publish,) = traces.named(f"publish {queue}")
    first, second = sorted(traces.named(f"process {queue}"), key=lambda s: s.start_time or 0)
    (retry,) = [s for s in traces.spans() if s.name.startswith(f"publish {queue}.retry.")]
    assert {trace_id(s) for s in (publish, first, retry, second)} == {trace_id(publish)}
    assert parent_of(first) == span_id(publish)
    assert parent_of(retry) == span_id(publish)
    assert parent_of(second) == span_id(retry)  # the copy carried the retry span's context
    assert first.status.status_code is StatusCode.ERROR
    assert (first.attributes or {})["error.type"] == "Retry"
    assert [e.name for e in first.events] == ["exception"]
    assert dict(retry.attributes or {}) | {"rabbitry.reason": ""} == {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": "",
        "messaging.rabbitmq.destination.routing_key": retry.name.removeprefix("publish "),
        "rabbitry.settlement": "retry",
        "rabbitry.queue": queue,
        "rabbitry.message.attempt": 1,
        "rabbitry.reason": "",
    }
    assert "stock service busy" in str((retry.attributes or {})["rabbitry.reason"])
    assert retry.kind is SpanKind.PRODUCER
    assert retry.status.status_code is StatusCode.UNSET
    assert (second.attributes or {})["rabbitry.message.attempt"] == 1
    assert second.status.status_code is StatusCode.UNSET


async def test_a_dead_letter_is_a_span_with_its_reason(
    settings: Settings, run_worker: WorkerRunner, broker: BrokerProbe, traces: Traces
) -> None:
    queue = f"{settings.namespace}.orders"
    tracing = Tracing(traces.provider)

    async def handle(message: Message) -> None:
        raise Reject("unknown product")

    topology = work_queue(queue, policy=settings.retry)
    async with (
        run_worker([Subscription(queue, {"order.placed": handle})], topology, middleware=[tracing]),
        Publisher(settings.amqp, middleware=[tracing]) as publisher,
    ):
        assert (await publisher.publish(Message("order.placed", {}), Route("", queue))).ok
        await eventually_true(
            lambda: _has(traces, f"publish {queue}.dlq"), timeout=30, what="the dead-letter span"
        )
    (dead,) = await broker.get_all(f"{queue}.dlq")
    assert dead.headers["x-rabbitry-reason"] == "unknown product"

    (publish,) = traces.named(f"publish {queue}")
    (process,) = traces.named(f"process {queue}")
    (dlq,) = traces.named(f"publish {queue}.dlq")
    assert parent_of(process) == span_id(publish)
    assert parent_of(dlq) == span_id(publish)
    assert process.status.status_code is StatusCode.ERROR
    assert (process.attributes or {})["error.type"] == "Reject"
    attributes = dict(dlq.attributes or {})
    assert attributes["rabbitry.settlement"] == "dead-letter"
    assert attributes["rabbitry.reason"] == "unknown product"
    assert attributes["rabbitry.message.attempt"] == 1
    assert [(e.name, dict(e.attributes or {})) for e in dlq.events] == [
        ("dead-lettered", {"rabbitry.reason": "unknown product"})
    ]
    # The dead letter still carries a trace context: what requeues it continues this trace.
    assert f"{trace_id(publish):032x}" in str(dead.headers["traceparent"])


async def test_a_malformed_message_from_a_foreign_publisher_is_traced_to_the_dead_letters(
    settings: Settings, run_worker: WorkerRunner, broker: BrokerProbe, traces: Traces
) -> None:
    queue = f"{settings.namespace}.orders"
    tracing = Tracing(traces.provider)
    parent = f"00-{'ab' * 16}-{'cd' * 8}-01"

    async def handle(message: Message) -> None:
        raise AssertionError("a malformed message never reaches its handler")

    topology = work_queue(queue, policy=settings.retry)
    async with run_worker(
        [Subscription(queue, {"order.placed": handle})], topology, middleware=[tracing]
    ):
        # pika sends the headers as it likes (a byte string here), as another client would.
        headers = {"rr_job": "order.placed", "traceparent": parent.encode()}
        await broker.publish("", queue, b"{not json", headers=headers)
        await eventually_true(
            lambda: _has(traces, f"publish {queue}.dlq"), timeout=30, what="the dead-letter span"
        )
    (dlq,) = traces.named(f"publish {queue}.dlq")
    assert trace_id(dlq) == int("ab" * 16, 16)
    assert parent_of(dlq) == int("cd" * 8, 16)
    assert str((dlq.attributes or {})["rabbitry.reason"]).startswith("body is not JSON")
    assert not traces.named(f"process {queue}")


async def test_without_a_tracer_provider_nothing_is_added_to_the_messages(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    # No SDK set up (this test process may have a global one from another test: the
    # no-op provider of the API is given explicitly, as a library user without one has).
    tracing = Tracing(trace.NoOpTracerProvider())
    queue = f"{settings.namespace}.orders"
    await declarer.declare(work_queue(queue, policy=settings.retry))
    async with Publisher(settings.amqp, middleware=[tracing]) as pub:
        assert (await pub.publish(Message("order.placed", {}), Route("", queue))).ok
    (received,) = await broker.get_all(queue)
    assert "traceparent" not in received.headers
    assert "tracestate" not in received.headers


async def test_a_message_stored_in_the_outbox_continues_its_trace_when_sent_later(
    settings: Settings, run_worker: WorkerRunner, broker: BrokerProbe, traces: Traces
) -> None:
    queue = f"{settings.namespace}.orders"
    tracing = Tracing(traces.provider)
    fallback = RecordingFallback()
    switched_off = settings.model_copy(update={"rabbit_active": False})
    async with Publisher(switched_off.amqp, fallback=fallback, middleware=[tracing]) as pub:
        result = await pub.publish(Message("order.placed", {}), Route("", queue))
    assert result.status == "persisted"
    (first,) = traces.named(f"publish {queue}")
    assert (first.attributes or {})["rabbitry.publish.status"] == "persisted"
    assert [e.name for e in first.events] == ["stored in the outbox"]
    ((route, stored, _),) = fallback.items
    assert stored.traceparent is not None and f"{span_id(first):016x}" in stored.traceparent

    done = asyncio.Event()

    async def handle(message: Message) -> None:
        done.set()

    topology = work_queue(queue, policy=settings.retry)
    async with (
        run_worker([Subscription(queue, {"order.placed": handle})], topology, middleware=[tracing]),
        Publisher(settings.amqp, middleware=[tracing]) as relay,  # as the relay sends it later
    ):
        assert (await relay.publish(stored, route)).ok
        await asyncio.wait_for(done.wait(), timeout=30)
        await eventually_true(
            lambda: _has(traces, f"process {queue}"), timeout=30, what="the process span"
        )
    first, again = sorted(traces.named(f"publish {queue}"), key=lambda s: s.start_time or 0)
    (process,) = traces.named(f"process {queue}")
    assert parent_of(again) == span_id(first)
    assert parent_of(process) == span_id(again)
    assert {trace_id(first), trace_id(again), trace_id(process)} == {trace_id(first)}


async def _has(traces: Traces, name: str) -> bool:
    return bool(traces.named(name))


async def _count(traces: Traces, name: str, count: int) -> bool:
    return len(traces.named(name)) >= count
