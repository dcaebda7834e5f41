"""Publisher-confirm bookkeeping for :class:`~rabbitry.amqp.link.Link`, by window.

A window is one ``publish`` or one ``publish_many`` batch: a run of consecutive delivery tags
sharing one future, so a batch of 1000 costs one future, not 1000. The broker confirms with
``multiple=True`` whenever it can, which settles whole windows in one step.

Unroutable mandatory messages come back as ``basic.return`` *before* the ``basic.ack`` for the
same tag, and the return carries no tag. The broker handles a channel's publishes in order and
returns them in that order, so a return belongs to the first later unsettled mandatory message
with the same exchange, routing key, message id and body. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rabbitry.amqp.properties import EMPTY, Properties


class Outcome(enum.Enum):
    """What the broker did with one published message."""

    ACKED = "acked"
    NACKED = "nacked"
    RETURNED = "returned"
    """Mandatory and unroutable: the broker returned it and no queue holds it."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :meth:`~rabbitry.amqp.link.Link.publish_many`."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties = EMPTY
    mandatory: bool = True


class _Window:
    __slots__ = ("first", "future", "messages", "outcomes", "single", "unsettled")

    def __init__(
        self, first: int, messages: Sequence[Outgoing], future: asyncio.Future[Any], single: bool
    ) -> None:
        self.first = first
        self.messages = messages
        self.future = future
        self.single = single
        self.outcomes: list[Outcome | None] = [None] * len(messages)
        self.unsettled = len(messages)

    def fill(self, low: int, high: int, outcome: Outcome) -> None:
        """Give ``outcome`` to every still-unsettled tag in ``[low, high]``."""
        count = len(self.outcomes)
        start = max(low - self.first, 0)
        stop = min(high - self.first + 1, count)
        if self.unsettled == count and start == 0 and stop == count:
            self.outcomes = [outcome] * count
            self.unsettled = 0
        else:
            outcomes = self.outcomes
            for index in range(start, stop):
                if outcomes[index] is None:
                    outcomes[index] = outcome
                    self.unsettled -= 1
        if not self.unsettled:
            self.resolve()

    def resolve(self) -> None:
        if not self.future.done():
            result: Any = self.outcomes if not self.single else self.outcomes[0]
            self.future.set_result(result)


class Confirms:
    """Delivery-tag windows of one channel in confirm mode."""

    def __init__(self) -> None:
        self.next_tag = 1
        self._windows: deque[_Window] = deque()
        self._returned_upto = 0  # tag of the last message matched to a basic.return

    @property
    def pending(self) -> int:
        """Messages still waiting for the broker's verdict."""
        return sum(window.unsettled for window in self._windows)

    def add(self, messages: Sequence[Outgoing], future: asyncio.Future[Any], single: bool) -> None:
        """Track ``messages``, just published in this order, under one future.

        The future gets an :class:`Outcome` when ``single`` is true, else a list of them.
        """
        self._windows.append(_Window(self.next_tag, messages, future, single))
        self.next_tag += len(messages)

    def settle(self, tag: int, multiple: bool, outcome: Outcome) -> None:
        """Apply a ``basic.ack``/``basic.nack`` from the broker."""
        windows = self._windows
        for window in windows:
            if window.first > tag:
                break
            if not window.unsettled:
                continue
            if multiple:
                window.fill(window.first, tag, outcome)
            elif tag < window.first + len(window.outcomes):
                window.fill(tag, tag, outcome)
                break
        while windows and not windows[0].unsettled:
            windows.popleft()

    def returned(
        self, exchange: str, routing_key: str, body: bytes, message_id: str | None
    ) -> bool:
        """Mark the message a ``basic.return`` refers to; False if none matches."""
        after = self._returned_upto
        for window in self._windows:
            start = max(after + 1 - window.first, 0)
            if not window.unsettled or start >= len(window.outcomes):
                continue
            for index in range(start, len(window.outcomes)):
                message = window.messages[index]
                if (
                    window.outcomes[index] is None
                    and message.mandatory
                    and message.routing_key == routing_key
                    and message.exchange == exchange
                    and message.properties.message_id == message_id
                    and message.body == body
                ):
                    tag = window.first + index
                    self._returned_upto = tag
                    window.fill(tag, tag, Outcome.RETURNED)
                    return True
        return False

    def fail(self, exc: BaseException) -> None:
        """Fail every pending window with ``exc`` (the channel is gone)."""
        windows = self._windows
        while windows:
            future = windows.popleft().future
            if not future.done():
                future.set_exception(exc)
