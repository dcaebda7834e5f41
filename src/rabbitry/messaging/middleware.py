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
        ``call_next``."""
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
