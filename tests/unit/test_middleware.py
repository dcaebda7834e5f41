"""What typed payloads and middleware cost when unused: nothing is wrapped, nothing is added
to the paths that run per message."""

from __future__ import annotations

import functools

from rabbitry import (
    Handler,
    Message,
    Middleware,
    Publisher,
    PublishNext,
    PublishResult,
    Route,
    Subscription,
)
from rabbitry.messaging.middleware import wrap_handler, wrap_publish


async def plain(message: Message) -> None:
    """A handler that takes the message."""


class ConsumeOnly(Middleware):
    async def consume(self, message: Message, call_next: Handler) -> object:
        return await call_next(message)


class PublishOnly(Middleware):
    async def publish(
        self, message: Message, route: Route, call_next: PublishNext
    ) -> PublishResult:
        return await call_next(message, route)


def test_a_message_handler_is_called_as_it_is_without_a_wrapper() -> None:
    sub = Subscription("q", {"a": plain}, default=plain)
    assert sub.resolved["a"] is plain
    assert sub.resolved_default is plain


def test_without_middleware_for_a_side_the_handler_and_publish_stay_unwrapped() -> None:
    assert wrap_handler(plain, []) is plain
    assert wrap_handler(plain, [PublishOnly()]) is plain
    assert wrap_handler(plain, [ConsumeOnly()]) is not plain

    async def send(message: Message, route: Route) -> PublishResult:
        raise AssertionError("not called")

    assert wrap_publish(send, [ConsumeOnly()]) is None


async def test_a_publisher_without_publish_middleware_keeps_its_own_publish() -> None:
    for publisher in (Publisher(), Publisher(middleware=[ConsumeOnly()])):
        assert "publish" not in vars(publisher)  # the class's method, not a chain in front
    chained = Publisher(middleware=[PublishOnly()])
    assert "publish" in vars(chained)


class Counter:
    """A handler that is an object, as some teams write them."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def __call__(self, payload: list[int]) -> None:
        self.seen.extend(payload)


async def test_partials_and_callable_objects_are_handlers_too_typed_or_not() -> None:
    async def scaled(factor: int, message: Message) -> int:
        return factor * int(message.payload)

    counter = Counter()
    sub = Subscription("q", {"scaled": functools.partial(scaled, 3), "count": counter})
    assert await sub.resolved["scaled"](Message("scaled", 2)) == 6
    await sub.resolved["count"](Message("count", ["4", 5]))  # validated: "4" -> 4
    assert counter.seen == [4, 5]
