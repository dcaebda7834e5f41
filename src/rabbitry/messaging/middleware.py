"""Middleware: code that runs around every handler call and every publish.

A middleware subclasses :class:`Middleware` and overrides :meth:`~Middleware.consume`,
:meth:`~Middleware.publish` or both; each gets the message and the next step of the chain,
and must call it (or raise) exactly once. The first middleware of a list is the outermost::

    class LogIds(Middleware):
        async def consume(self, message: Message, call_next: Handler) -> object:
            with log_context(message_id=message.id, tenant=message.tenant):
                return await call_next(message)

    Worker("orders", [subscription], topology, middleware=[LogIds()])
    Publisher(amqp, middleware=[LogIds()])

What ``consume`` raises is what the consumer settles (:class:`~rabbitry.Retry`,
:class:`~rabbitry.Reject`, any other error retries); what it returns is the handler's result
(the reply to a request). The chains are built once, when a consumer starts or a publisher is
made; a middleware that overrides only one side is left out of the other, and no middleware at
all leaves the handler and the publish path exactly as they were.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from rabbitry.messaging.envelope import Message
from rabbitry.messaging.payloads import Handler

if TYPE_CHECKING:
    from rabbitry.messaging.publisher import PublishResult, Route

PublishNext = Callable[["Message", "Route"], Awaitable["PublishResult"]]
"""The rest of a publish chain: the message and its route in, the broker's verdict out."""


class Middleware:
    """Base class; both methods pass straight through unless overridden."""

    async def consume(self, message: Message, call_next: Handler) -> object:
        """Around one handler call, after the message was decoded."""
        return await call_next(message)

    async def publish(
        self, message: Message, route: Route, call_next: PublishNext
    ) -> PublishResult:
        """Around one :meth:`Publisher.publish` (and each message of ``publish_many``), before
        the message is encoded: it may return another message (a header added) to
        ``call_next``. In ``publish_many``, ``call_next`` returns once the whole batch was
        sent: the messages still go out as one batch, with one wait for their confirms."""
        return await call_next(message, route)


def wrap_handler(handler: Handler, middleware: Sequence[Middleware]) -> Handler:
    """``handler`` inside the ``consume`` chain of ``middleware`` (first = outermost)."""
    for layer in reversed(middleware):
        if type(layer).consume is not Middleware.consume:
            handler = functools.partial(layer.consume, call_next=handler)
    return handler


def wrap_publish(publish: PublishNext, middleware: Sequence[Middleware]) -> PublishNext | None:
    """``publish`` inside the ``publish`` chain, or ``None`` when no middleware takes part."""
    layers = [m for m in middleware if type(m).publish is not Middleware.publish]
    if not layers:
        return None
    for layer in reversed(layers):
        publish = functools.partial(layer.publish, call_next=publish)
    return publish


class Gathering:
    """Where the publish chains of one ``publish_many`` end: each message goes through the
    middleware on its own (a middleware sees one message at a time), and the chains' ends meet
    here, so that what reaches the end is sent as one batch, one write and one wait for the
    confirms, as ``publish_many`` sends without middleware. The batch goes once every chain has
    either reached the end or finished without it (a middleware that answered by itself, or
    raised)."""

    def __init__(
        self,
        size: int,
        send: Callable[[list[tuple[Message, Route]]], Awaitable[list[PublishResult]]],
    ) -> None:
        self._pending = size  # chains that have neither reached the end nor finished
        self._settled: set[int] = set()
        self._items: list[tuple[Message, Route]] = []
        self._waiters: list[asyncio.Future[PublishResult]] = []
        self._send = send

    def chain(self, slot: int, middleware: Sequence[Middleware]) -> PublishNext:
        """The publish chain of the message at ``slot``, ending here."""
        chain = wrap_publish(functools.partial(self._reach, slot), middleware)
        assert chain is not None, "a Gathering is only for publish middleware"
        return chain

    async def finished(self, slot: int) -> None:
        """The chain of ``slot`` returned or raised; if it never reached the end, the batch
        no longer waits for it (and this call sends it when it was the last one)."""
        if slot not in self._settled:
            self._settled.add(slot)
            self._pending -= 1
            if self._pending == 0:
                await self._flush()

    async def _reach(self, slot: int, message: Message, route: Route) -> PublishResult:
        waiter: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
        self._items.append((message, route))
        self._waiters.append(waiter)
        self._settled.add(slot)
        self._pending -= 1
        if self._pending == 0:
            await self._flush()
        return await waiter

    async def _flush(self) -> None:
        if not self._items:
            return
        try:
            results = await self._send(self._items)
        except BaseException as exc:
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for waiter, result in zip(self._waiters, results, strict=True):
            if not waiter.done():
                waiter.set_result(result)
