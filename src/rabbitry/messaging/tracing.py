"""Traces across the broker: OpenTelemetry spans around publishing and consuming.

:class:`Tracing` is a :class:`~rabbitry.messaging.middleware.Middleware`; give it to a
:class:`~rabbitry.Publisher` and a :class:`~rabbitry.Worker` (the runnable system does)::

    tracing = Tracing()
    Publisher(amqp, middleware=[tracing])
    Worker("orders", [subscription], topology, middleware=[tracing])

A publish runs in a PRODUCER span ``publish <exchange>`` and carries its W3C trace context in
the message (``traceparent``, and ``tracestate`` / ``baggage`` when there are some, as AMQP
headers); a consumed message's handler runs in a CONSUMER span ``process <queue>``, child of
the publisher's span. The consumer's retry and dead-letter copies are PRODUCER spans of their
own (``publish <queue>.retry.<ms>``, ``publish <queue>.dlq``), so a trace shows each attempt.
Attribute names follow OpenTelemetry's messaging semantic conventions (``messaging.system``,
``messaging.destination.name``, ...); Rabbitry's own are under ``rabbitry.``.

Only ``opentelemetry-api`` is needed. Until an SDK's tracer provider is set (globally, or given
to :class:`Tracing`), every call passes straight through: one provider look-up per message.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status
from opentelemetry.trace import StatusCode as Code

from rabbitry._version import __version__
from rabbitry.messaging.envelope import TRACEPARENT_HEADER, Message
from rabbitry.messaging.middleware import Middleware, PublishNext
from rabbitry.messaging.payloads import Handler
from rabbitry.messaging.publisher import PublishResult, PublishStatus, Route

SYSTEM = "rabbitmq"
ATTEMPT = "rabbitry.message.attempt"  # how many times the message was retried before
_NO_PROVIDER = (ProxyTracerProvider, NoOpTracerProvider)


def active_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer | None:
    """Rabbitry's tracer from ``provider`` (the global one when ``None``), or ``None`` while
    no SDK is set up: callers then skip tracing altogether (the API's no-op spans still cost
    a few microseconds each, and the hot paths publish millions)."""
    provider = provider or trace.get_tracer_provider()
    if isinstance(provider, _NO_PROVIDER):
        return None
    return _tracer_of(provider)


@functools.lru_cache(maxsize=8)
def _tracer_of(provider: trace.TracerProvider) -> trace.Tracer:
    # The SDK builds a new tracer on each get_tracer (40 % of a span's cost, measured).
    return provider.get_tracer("rabbitry", __version__)


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads propagation fields from AMQP headers (text, or bytes from other clients)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes | bytearray):
            value = bytes(value).decode("utf-8", "replace")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


HEADERS = _HeaderGetter()


def context_of(message: Message) -> Context:
    """The trace context ``message`` carries (empty when it carries none)."""
    carrier: dict[str, Any] = dict(message.extra)
    if message.traceparent is not None:
        carrier[TRACEPARENT_HEADER] = message.traceparent
    return propagate.extract(carrier, getter=HEADERS)


def carrying(message: Message, context: Context | None = None) -> Message:
    """``message`` with the trace context (the current one by default) in its headers."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context)
    traceparent = carrier.pop(TRACEPARENT_HEADER, None)
    if traceparent is None:
        return message
    extra = message.extra
    if carrier or "tracestate" in extra:
        # A tracestate belongs to its traceparent: one left from a message received earlier
        # must not ride along with the new context.
        extra = {k: v for k, v in extra.items() if k != "tracestate"} | carrier
    return dataclasses.replace(message, traceparent=traceparent, extra=extra)


def publish_attributes(message: Message, exchange: str, routing_key: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": exchange,
        "messaging.message.id": message.id,
        "rabbitry.message.type": message.type,
    }
    if routing_key:
        attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
    if message.correlation_id is not None:
        attributes["messaging.message.conversation_id"] = message.correlation_id
    if message.tenant is not None:
        attributes["rabbitry.tenant"] = message.tenant
    if message.attempt:
        attributes[ATTEMPT] = message.attempt
    return attributes


class Tracing(Middleware):
    """Spans around every publish and every handler call (see the module docstring).

    ``tracer_provider`` defaults to the global one (``opentelemetry.trace``), looked up on
    each message, so a provider set after the publisher or worker was made is used."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider

    def tracer(self) -> trace.Tracer | None:
        return active_tracer(self._provider)

    async def publish(
        self, message: Message, route: Route, call_next: PublishNext
    ) -> PublishResult:
        tracer = self.tracer()
        if tracer is None:
            return await call_next(message, route)
        # A message that carries a context and is sent outside any span (the outbox relay
        # sending a stored message, a requeue) continues the trace it was published in.
        parent = None
        if not trace.get_current_span().get_span_context().is_valid:
            parent = context_of(message)
        destination = route.exchange or route.routing_key
        with tracer.start_as_current_span(
            f"publish {destination}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=publish_attributes(message, route.exchange, route.routing_key),
        ) as span:
            result = await call_next(carrying(message), route)
            span.set_attribute("rabbitry.publish.status", str(result.status))
            if result.status is PublishStatus.PERSISTED:
                span.add_event("stored in the outbox", {"rabbitry.reason": result.error or ""})
            elif result.status is PublishStatus.FAILED:
                span.set_status(Status(Code.ERROR, result.error))
                span.set_attribute("error.type", "rabbitry.publish_failed")
            return result

    async def consume(self, message: Message, call_next: Handler) -> object:
        tracer = self.tracer()
        if tracer is None:
            return await call_next(message)
        queue = message.queue or message.routing_key
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": message.exchange,
            "messaging.destination.subscription.name": queue,
            "messaging.message.id": message.id,
            "messaging.message.body.size": len(message.body()),
            "rabbitry.message.type": message.type,
            ATTEMPT: message.attempt,
        }
        if message.routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = message.routing_key
        if message.correlation_id is not None:
            attributes["messaging.message.conversation_id"] = message.correlation_id
        if message.tenant is not None:
            attributes["rabbitry.tenant"] = message.tenant
        with tracer.start_as_current_span(
            f"process {queue}",
            context=context_of(message),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await call_next(message)
            except Exception as exc:
                # What the handler asked for; the consumer's retry or dead-letter copy is a
                # span of its own (:meth:`forwarding`), once the policy decided.
                span.record_exception(exc)
                span.set_status(Status(Code.ERROR, f"{type(exc).__name__}: {exc}"[:1000]))
                span.set_attribute("error.type", type(exc).__qualname__)
                raise

    @contextmanager
    def forwarding(
        self,
        headers: Mapping[str, Any] | None,
        queue: str,
        target: str,
        *,
        dead_letter: bool,
        attempt: int,
        reason: str,
    ) -> Iterator[Forward]:
        """A PRODUCER span around the consumer's copy of a failed delivery to ``target`` (a
        retry queue or the dead-letter queue), child of the context the delivery carried
        (``headers``: its AMQP headers, so an undecodable message is traced too). The
        copy carries this span's context (:attr:`Forward.headers`), so its next attempt is
        a child of it."""
        tracer = self.tracer()
        if tracer is None:
            yield Forward({})
            return
        parent = propagate.extract(headers or {}, getter=HEADERS)
        attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.destination.name": "",
            "messaging.rabbitmq.destination.routing_key": target,
            "rabbitry.settlement": "dead-letter" if dead_letter else "retry",
            "rabbitry.queue": queue,
            ATTEMPT: attempt,
            "rabbitry.reason": reason[:1000],
        }
        with tracer.start_as_current_span(
            f"publish {target}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            forward = Forward(carrier)
            yield forward
            if not forward.confirmed:
                span.set_status(Status(Code.ERROR, "the broker did not confirm the copy"))
            if dead_letter:
                span.add_event("dead-lettered", {"rabbitry.reason": reason[:1000]})


def tracing_middleware() -> tuple[Middleware, ...]:
    """``(Tracing(),)`` when a tracer provider is set up now, else ``()``: what the runnable
    system gives its publishers and workers, once, at start (after
    :mod:`rabbitry.app.telemetry` ran). Untraced, a publisher then keeps its batched
    ``publish_many`` (any publish middleware sends each message on its own: about half the
    throughput, measured in bench/tracing.py)."""
    return (Tracing(),) if active_tracer() is not None else ()


@dataclasses.dataclass(slots=True)
class Forward:
    """The trace headers of a retry or dead-letter copy; ``confirmed`` once the broker took
    it (the consumer sets it)."""

    headers: dict[str, str]
    confirmed: bool = False


__all__ = [
    "HEADERS",
    "Forward",
    "Tracing",
    "active_tracer",
    "carrying",
    "context_of",
    "tracing_middleware",
]
