"""Publisher-confirm bookkeeping for :class:`~rabbitry.amqp.link.Link`, by window.

A window is one ``publish`` or one ``publish_many`` batch: a run of consecutive delivery tags
sharing one future, so a batch of 1000 costs one future, not 1000. The broker confirms with
``multiple=True`` whenever it can, which settles whole windows in one step.

Unroutable mandatory messages come back as ``basic.return`` *before* the ``basic.ack`` for the
same tag, and the return carries no tag. The broker handles a channel's publishes in order and
returns them in that order, so a return belongs to the first later unsettled mandatory message
with the same exchange, routing key, encoded properties and body: the broker echoes the
property bytes it received, so two messages match only when they are the same bytes, and then
which of the two was returned makes no difference.

A publish the broker refuses (no such exchange, no write access) closes the channel. What was
published before it on the channel was handled, so it was routed; what came after was thrown
away unread, so it can be published again: :meth:`Confirms.refuse` says so per message instead
of failing the whole window. Pure bookkeeping, no I/O.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rabbitry.amqp.properties import EMPTY, Properties, encode_properties


class PublishOutcome(enum.Enum):
    """What the broker did with one published message."""

    ACKED = "acked"
    NACKED = "nacked"
    RETURNED = "returned"
    """Mandatory and unroutable: the broker returned it and no queue holds it."""
    REFUSED = "refused"
    """The broker refused it with a channel error (e.g. 404: no such exchange); the link's
    ``error`` says why."""
    SKIPPED = "skipped"
    """Published after a refused message on the same channel: the broker dropped it unread,
    so it reached no queue and may be published again."""
    UNFIT = "unfit"
    """Never sent: it cannot be encoded as it is (see :class:`~rabbitry.amqp.base.Unfit`)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for :meth:`~rabbitry.amqp.link.Link.publish_many`."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties = EMPTY
    mandatory: bool = True


class _Window:
    __slots__ = ("encoded", "first", "future", "messages", "outcomes", "single", "unsettled")

    def __init__(
        self,
        first: int,
        messages: Sequence[Outgoing],
        encoded: Sequence[bytes],
        future: asyncio.Future[Any],
        single: bool,
    ) -> None:
        self.first = first
        self.messages = messages
        self.encoded = encoded  # each message's properties as written, to match returns
        self.future = future
        self.single = single
        self.outcomes: list[PublishOutcome | None] = [None] * len(messages)
        self.unsettled = len(messages)

    def fill(self, low: int, high: int, outcome: PublishOutcome) -> None:
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

    def add(
        self,
        messages: Sequence[Outgoing],
        future: asyncio.Future[Any],
        single: bool,
        encoded: Sequence[bytes] | None = None,
    ) -> None:
        """Track ``messages``, just published in this order, under one future.

        ``encoded`` holds each one's properties as written (encoded here when not given).
        The future gets an :class:`PublishOutcome` when ``single`` is true, else a list of them.
        """
        if encoded is None:
            encoded = [encode_properties(message.properties) for message in messages]
        self._windows.append(_Window(self.next_tag, messages, encoded, future, single))
        self.next_tag += len(messages)

    def settle(self, tag: int, multiple: bool, outcome: PublishOutcome) -> None:
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

    def returned(self, exchange: str, routing_key: str, body: bytes, properties: bytes) -> bool:
        """Mark the message a ``basic.return`` refers to; False if none matches.

        ``properties`` is the returned content header's property list, as received.
        """
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
                    and window.encoded[index] == properties
                    and message.body == body
                ):
                    tag = window.first + index
                    self._returned_upto = tag
                    window.fill(tag, tag, PublishOutcome.RETURNED)
                    return True
        return False

    def refuse(self, exchange: str, error: BaseException, skipped: BaseException) -> bool:
        """The channel closed because a publish to ``exchange`` was refused with ``error``.

        The first unsettled message to ``exchange`` is the one: earlier ones were handled
        (routed; their confirms went down with the channel), later ones were dropped unread.
        Every window resolves: a batch with those outcomes, a single publish with ``ACKED``,
        or ``error`` for the refused one, ``skipped`` for the dropped ones. False, changing
        nothing, when no unsettled message went to ``exchange`` (then :meth:`fail` it is).
        """
        culprit = 0
        for window in self._windows:
            for index, message in enumerate(window.messages):
                if window.outcomes[index] is None and message.exchange == exchange:
                    culprit = window.first + index
                    break
            if culprit:
                break
        if not culprit:
            return False
        windows = self._windows
        while windows:
            window = windows.popleft()
            outcomes = window.outcomes
            for index, outcome in enumerate(outcomes):
                if outcome is None:
                    tag = window.first + index
                    outcomes[index] = (
                        PublishOutcome.ACKED
                        if tag < culprit
                        else PublishOutcome.REFUSED
                        if tag == culprit
                        else PublishOutcome.SKIPPED
                    )
            window.unsettled = 0
            future = window.future
            if future.done():
                continue
            if window.single and outcomes[0] is PublishOutcome.REFUSED:
                future.set_exception(error)
            elif window.single and outcomes[0] is PublishOutcome.SKIPPED:
                future.set_exception(skipped)
            else:
                window.resolve()
        return True

    def fail(self, exc: BaseException) -> None:
        """Fail every pending window with ``exc`` (the channel is gone)."""
        windows = self._windows
        while windows:
            future = windows.popleft().future
            if not future.done():
                future.set_exception(exc)
