"""The seam to aio-pika: topology declaration, bindings, and translation of its errors.

Hot-path publishing and consuming go through :mod:`rabbitry.amqp.link`; everything that
changes the broker's shape goes through here. The declarer remembers what it declared, so
declaring twice costs nothing, and re-applies everything after aio-pika reconnects (a broker
restart loses non-durable objects and bindings of exclusive queues).

It also answers what an operator asks of a queue: its depth and consumers (a passive declare,
so no management plugin is needed), and :class:`Holding` takes messages with ``basic.get``
without acking them, for the dead-letter pages (:mod:`rabbitry.messaging.deadletters`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    UnderlayConnection,
)
from yarl import URL

from rabbitry.amqp.spec import Binding, Exchange, Queue, Topology
from rabbitry.amqp.url import Endpoint
from rabbitry.errors import BrokerError, BrokerUnavailable, ConfigError, NotFound, RabbitryError

log = logging.getLogger(__name__)


def translate(exc: BaseException, action: str) -> RabbitryError:
    """Map an aio-pika/aiormq/socket exception to Rabbitry's error tree."""
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return NotFound(f"{action}: {exc}")
    if isinstance(exc, aiormq.exceptions.AMQPConnectionError) and not isinstance(
        exc, aiormq.exceptions.ProbableAuthenticationError
    ):  # refused, reset: no broker there
        return BrokerUnavailable(f"{action}: broker unreachable: {exc}")
    if isinstance(exc, aiormq.exceptions.AMQPError | aio_pika.exceptions.AMQPException):
        return BrokerError(f"{action}: {type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError) and not str(exc):
        return BrokerUnavailable(f"{action}: no reply from the broker in time")
    if isinstance(exc, OSError | ConnectionError | asyncio.TimeoutError):
        return BrokerUnavailable(f"{action}: broker unreachable: {exc or type(exc).__name__}")
    return BrokerError(f"{action}: {type(exc).__name__}: {exc}")


class Declarer:
    """Declares topology on one robust aio-pika connection; idempotent and reconnect-aware.

    Every call waits at most ``rpc_timeout`` seconds for the broker (a declaration of a whole
    topology counts as one call), so a broker that stopped reading cannot hang a shutdown.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        channel: AbstractChannel,
        rpc_timeout: float = 10.0,
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._rpc_timeout = rpc_timeout
        self._declared: set[Exchange | Queue | Binding] = set()
        self._wanted = Topology()
        self._lock = asyncio.Lock()
        connection.reconnect_callbacks.add(self._on_reconnect)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        timeout: float = 5.0,
        name: str = "rabbitry",
        rpc_timeout: float | None = None,
    ) -> Declarer:
        """Connect with the URL read as :class:`~rabbitry.amqp.link.Link` reads it (TLS,
        options, vhost, credentials): :mod:`rabbitry.amqp.url` parses it for both."""
        try:
            endpoint = Endpoint.from_url(url)
            # Each host in turn, from a random one; TLS goes in the context.
            urls = [candidate.aio_pika_url() for candidate in endpoint.candidates()]
            context = endpoint.ssl_context()
        except ValueError as exc:
            raise ConfigError(f"broker URL: {exc}") from None
        label = f"{endpoint.name}:{name}" if endpoint.name else name
        limit = endpoint.connection_timeout or timeout
        connection: _Robust | None = None
        try:
            # aio-pika gives up at the first failed attempt (fail_fast): try each host once.
            for attempt in range(len(urls)):
                try:
                    connection = _Robust(
                        urls,
                        attempt,
                        ssl_context=context,
                        client_properties={"connection_name": f"{label}-declarer"},
                    )
                    await connection.connect(timeout=limit)
                    break
                except BaseException as exc:
                    # After a failed or cancelled connect, aio-pika's robust connection goes on
                    # trying in the background (a cancel included): closed here, or it
                    # outlives its caller and hangs the event loop's shutdown (a requeue
                    # stopped by a second signal did).
                    if connection is not None:
                        with contextlib.suppress(Exception):
                            await connection.close()
                    connection = None
                    if not isinstance(exc, Exception) or attempt == len(urls) - 1:
                        raise
            assert connection is not None
            channel = await asyncio.wait_for(
                connection.channel(publisher_confirms=False), rpc_timeout or timeout
            )
        except BaseException as exc:
            if connection is not None:  # connected, and the channel failed or was cancelled
                with contextlib.suppress(Exception):
                    await connection.close()
            if isinstance(exc, Exception):
                raise translate(exc, "connect") from exc
            raise
        return cls(connection, channel, rpc_timeout or 10.0)

    async def declare(self, topology: Topology) -> None:
        """Declare every exchange, then queue, then binding not declared yet."""
        async with self._lock:
            wanted, self._wanted = self._wanted, self._wanted | topology
            try:
                async with asyncio.timeout(self._rpc_timeout):
                    await self._apply(topology)
            except TimeoutError as exc:
                raise translate(exc, "declare topology") from exc
            except RabbitryError:
                # A refused declaration (PRECONDITION_FAILED) closes the channel: reopen it for
                # the next call, and re-apply only what was wanted before after a reconnect.
                self._wanted = wanted
                with contextlib.suppress(Exception):
                    await self._reopen()
                raise

    async def _apply(self, topology: Topology) -> None:
        try:
            for exchange in sorted(topology.exchanges, key=lambda e: e.name):
                if exchange not in self._declared:
                    await self._channel.declare_exchange(
                        exchange.name,
                        type=exchange.type.value,
                        durable=exchange.durable,
                        auto_delete=exchange.auto_delete,
                    )
                    self._declared.add(exchange)
            for queue in sorted(topology.queues, key=lambda q: q.name):
                if queue not in self._declared:
                    await self._channel.declare_queue(
                        queue.name,
                        durable=queue.durable,
                        exclusive=queue.exclusive,
                        auto_delete=queue.auto_delete,
                        arguments=_arguments(queue.arguments),
                    )
                    self._declared.add(queue)
            for binding in sorted(topology.bindings, key=_binding_key):
                if binding not in self._declared:
                    await self._bind(binding)
        except RabbitryError:
            raise
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            # An exchange or queue exists with other arguments: declaring again cannot fix
            # it, so it is the operator's to resolve, not a broker outage to retry.
            with contextlib.suppress(Exception):
                await self._reopen()
            raise ConfigError(_mismatch(exc)) from exc
        except Exception as exc:
            raise translate(exc, "declare topology") from exc

    async def _bind(self, binding: Binding) -> None:
        await (await self._channel.get_underlay_channel()).queue_bind(
            binding.queue, binding.exchange, routing_key=binding.routing_key
        )
        self._declared.add(binding)

    async def bind(self, binding: Binding) -> None:
        async with self._lock:
            try:
                async with asyncio.timeout(self._rpc_timeout):
                    await self._bind(binding)
            except Exception as exc:
                raise translate(exc, f"bind {binding.queue}") from exc
            self._wanted = self._wanted | Topology.of(bindings=[binding])

    async def unbind(self, binding: Binding) -> None:
        async with self._lock:
            self._wanted = Topology(
                self._wanted.exchanges, self._wanted.queues, self._wanted.bindings - {binding}
            )
            self._declared.discard(binding)
            try:
                async with asyncio.timeout(self._rpc_timeout):
                    underlay = await self._channel.get_underlay_channel()
                    await underlay.queue_unbind(
                        binding.queue, binding.exchange, routing_key=binding.routing_key
                    )
            except Exception as exc:
                raise translate(exc, f"unbind {binding.queue}") from exc

    async def delete(self, topology: Topology) -> None:
        """Delete queues and exchanges (tests and teardown); missing ones are fine. Each
        deletion waits at most ``rpc_timeout`` (a teardown must not hang on a broker that is
        away)."""
        async with self._lock:
            await self._reopen()
            try:
                for queue in topology.queues:
                    async with asyncio.timeout(self._rpc_timeout):
                        underlay = await self._channel.get_underlay_channel()
                        await underlay.queue_delete(queue.name)
                    self._declared.discard(queue)
                for exchange in topology.exchanges:
                    async with asyncio.timeout(self._rpc_timeout):
                        underlay = await self._channel.get_underlay_channel()
                        await underlay.exchange_delete(exchange.name)
                    self._declared.discard(exchange)
            except Exception as exc:
                raise translate(exc, "delete topology") from exc

    async def delete_idle_queue(self, name: str) -> bool:
        """Delete queue ``name`` only if it holds no message and has no consumer (the broker
        checks both in the same step); False if it was not deleted for either reason. A
        missing queue counts as deleted."""
        async with self._lock:
            try:
                async with asyncio.timeout(self._rpc_timeout):
                    underlay = await self._channel.get_underlay_channel()
                    await underlay.queue_delete(name, if_unused=True, if_empty=True)
            except aiormq.exceptions.ChannelPreconditionFailed:
                await self._reopen()
                return False
            except aiormq.exceptions.ChannelNotFoundEntity:
                await self._reopen()
            except Exception as exc:
                await self._reopen()
                raise translate(exc, f"delete {name}") from exc
            self._declared = {d for d in self._declared if getattr(d, "name", None) != name}
            return True

    async def purge(self, name: str) -> None:
        """Drop every ready message of queue ``name``."""
        try:
            async with asyncio.timeout(self._rpc_timeout):
                await (await self._channel.get_underlay_channel()).queue_purge(name)
        except Exception as exc:
            raise translate(exc, f"purge {name}") from exc

    async def queue_size(self, name: str) -> int:
        """Messages ready in ``name`` (a passive declare); raises NotFound if it is missing."""
        try:
            async with asyncio.timeout(self._rpc_timeout):
                underlay = await self._channel.get_underlay_channel()
                result = await underlay.queue_declare(name, passive=True)
        except Exception as exc:
            # A failed passive declare closes the channel: reopen it for the next caller.
            await self._reopen()
            raise translate(exc, f"queue {name}") from exc
        return int(result.message_count or 0)

    async def queue_status(self, name: str) -> QueueStatus:
        """Ready messages and consumers of ``name`` (a passive declare); NotFound if missing."""
        try:
            async with asyncio.timeout(self._rpc_timeout):
                underlay = await self._channel.get_underlay_channel()
                result = await underlay.queue_declare(name, passive=True)
        except Exception as exc:
            await self._reopen()
            raise translate(exc, f"queue {name}") from exc
        return QueueStatus(int(result.message_count or 0), int(result.consumer_count or 0))

    async def hold(self, queue: str) -> Holding:
        """A channel of its own to take messages from ``queue`` and settle them one by one
        (close it to give back the rest); NotFound if the queue is missing."""
        try:
            channel = await self._connection.channel(publisher_confirms=False)
        except Exception as exc:
            raise translate(exc, "open a channel") from exc
        try:
            declared = await channel.get_queue(queue, ensure=True)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await channel.close()
            raise translate(exc, f"queue {queue}") from exc
        return Holding(channel, declared)

    async def exchange_exists(self, name: str) -> bool:
        """Whether exchange ``name`` exists (a passive declare); broker trouble raises."""
        try:
            async with asyncio.timeout(self._rpc_timeout):
                underlay = await self._channel.get_underlay_channel()
                await underlay.exchange_declare(name, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            await self._reopen()
            return False
        except Exception as exc:
            await self._reopen()
            raise translate(exc, f"exchange {name}") from exc
        return True

    async def _reopen(self) -> None:
        """A channel in place of one a refused call closed. With the connection down there is
        none to open, and nothing is lost: its reconnect opens one (:meth:`_on_reconnect`),
        and the caller reports its own error, the broker's, not this one."""
        if self._channel.is_closed:
            try:
                self._channel = await self._connection.channel(publisher_confirms=False)
            except Exception as exc:
                log.debug("no new channel while the broker connection is down: %r", exc)

    async def _on_reconnect(self, *_: Any) -> None:
        log.info("broker connection back: re-declaring topology")
        async with self._lock:
            self._declared.clear()
            self._channel = await self._connection.channel(publisher_confirms=False)
            await self._apply(self._wanted)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._connection.close(), self._rpc_timeout)
        except TimeoutError:
            log.warning("declarer connection did not close in %gs; dropped", self._rpc_timeout)

    async def __aenter__(self) -> Declarer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """What a passive declare tells about a queue."""

    messages: int
    consumers: int


@dataclass(frozen=True, slots=True)
class Taken:
    """A message taken with ``basic.get``, not settled yet: its channel holds it."""

    tag: int
    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    timestamp: dt.datetime | None
    redelivered: bool


class Holding:
    """Messages taken from one queue without an ack, on a channel of their own.

    Each is acked on its own once its owner is done with it (moved elsewhere with a confirmed
    publish); closing the channel hands every message not acked back to the queue, in order.
    """

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue) -> None:
        self._channel = channel
        self._queue = queue
        self._held: dict[int, AbstractIncomingMessage] = {}

    async def take(self, timeout: float = 5.0) -> Taken | None:
        """The next ready message (``basic.get``, no ack), or ``None`` when there is none."""
        try:
            got = await self._queue.get(no_ack=False, fail=False, timeout=timeout)
        except Exception as exc:
            raise translate(exc, f"get from {self._queue.name}") from exc
        if got is None:
            return None
        tag = int(got.delivery_tag or 0)
        self._held[tag] = got
        stamp = got.timestamp
        return Taken(
            tag=tag,
            body=bytes(got.body),
            headers=dict(got.headers or {}),
            message_id=got.message_id,
            timestamp=stamp.replace(tzinfo=dt.UTC) if stamp and stamp.tzinfo is None else stamp,
            redelivered=bool(got.redelivered),
        )

    async def ack(self, taken: Taken) -> None:
        """Remove ``taken`` from the queue for good."""
        message = self._held.pop(taken.tag)
        try:
            await message.ack()
        except Exception as exc:
            raise translate(exc, f"ack on {self._queue.name}") from exc

    async def close(self) -> None:
        """Give every message not acked back to the queue."""
        self._held.clear()
        with contextlib.suppress(Exception):  # a channel that is gone has given them back
            await self._channel.close()

    async def __aenter__(self) -> Holding:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Robust(aio_pika.RobustConnection):
    """aio-pika's robust connection over the hosts of a cluster URL, each attempt (the first,
    and every reconnect after a loss) going to the next host in turn, so a dead node costs a
    reconnect instead of retrying it forever."""

    def __init__(self, urls: list[str], first: int, **kwargs: Any) -> None:
        self._urls = urls
        self._next = first
        super().__init__(URL(urls[first]), **kwargs)
        self._next = first  # the constructor's own reset of ``transport`` was not an attempt

    # aio-pika clears ``transport`` right before each connection attempt (and on close), and
    # reads ``url`` in that attempt: the one place to choose the host, without copying its
    # reconnect loop.
    @property
    def transport(self) -> UnderlayConnection | None:
        return self._transport

    @transport.setter
    def transport(self, value: UnderlayConnection | None) -> None:
        self._transport = value
        urls = getattr(self, "_urls", None)
        if value is None and urls:
            self.url = URL(urls[self._next % len(urls)])
            self._next += 1


def _mismatch(exc: aiormq.exceptions.ChannelPreconditionFailed) -> str:
    reply = str(exc.args[0]) if exc.args else str(exc)
    if "for queue" in reply:
        hint = (
            "set RABBITRY_QUEUE_TYPE to the queue's type (classic or quorum), or move its"
            " messages and delete it so Rabbitry declares it again"
        )
    else:
        hint = "delete the exchange so Rabbitry declares it again"
    return f"the broker has it declared differently: {reply}; {hint}"


def _binding_key(binding: Binding) -> tuple[str, str, str]:
    return (binding.exchange, binding.queue, binding.routing_key)


def _arguments(arguments: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    # aio-pika chooses integer widths itself; RabbitMQ accepts any integer type for x-args,
    # but a flag only as a boolean (x-single-active-consumer refuses 1).
    return {
        name: (int(value) if isinstance(value, int) and not isinstance(value, bool) else value)
        for name, value in arguments
    }
