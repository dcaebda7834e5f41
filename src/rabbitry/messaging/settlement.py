"""What becomes of a delivery whose handler failed: a handler's own say (:class:`Retry`,
:class:`Reject`), the attempt it was, and the decision (:func:`failed`): a retry after a delay
tier of the policy, or a dead letter, with the reason and error the copy carries; and the
properties of that copy (:func:`copy_properties`). Pure, no I/O.

A malformed message (:class:`~rabbitry.errors.MessageError`) or a :class:`Reject` is
dead-lettered at once; any other exception is retried as the policy says, until the policy
dead-letters it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rabbitry.amqp.base import Received
from rabbitry.amqp.properties import Properties
from rabbitry.errors import MessageError
from rabbitry.messaging import envelope
from rabbitry.messaging.retry import RetryPolicy


class Retry(Exception):
    """Raised by a handler: try this message again later (after ``delay`` seconds if given)."""

    def __init__(self, delay: float | None = None, reason: str = "") -> None:
        super().__init__(reason or "retry requested")
        self.delay = delay
        self.reason = reason or "retry requested"


class Reject(Exception):
    """Raised by a handler: this message can never succeed; dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Failed:
    """The decision on a failed delivery."""

    attempt: int
    """The try that failed, counting this one (1: the first)."""
    delay: int | None
    """Milliseconds to wait in the retry queue of that tier; ``None``: dead-letter it."""
    reason: str
    """Why, as the handler put it (a :class:`Retry`'s or :class:`Reject`'s reason)."""
    error: str
    """The exception's type and reason, at most 1,000 characters."""


def failed(delivery: Received, exc: BaseException, policy: RetryPolicy) -> Failed:
    """What becomes of ``delivery``, whose handling failed with ``exc``, under ``policy``."""
    attempt = attempt_of(delivery) + 1
    if isinstance(exc, MessageError | Reject):
        delay = None
    else:
        requested = exc.delay if isinstance(exc, Retry) else None
        delay = policy.next_delay_ms(attempt, requested)
    reason = exc.reason if isinstance(exc, Retry | Reject) else str(exc)
    error = f"{type(exc).__name__}: {reason}"[:1000]
    return Failed(attempt, delay, reason, error)


def attempt_of(delivery: Received) -> int:
    """The tries ``delivery`` had before (its ``x-rabbitry-attempt`` header; 0 without one)."""
    value = (delivery.properties.headers or {}).get(envelope.ATTEMPT_HEADER, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def copy_properties(props: Properties, extra: Mapping[str, Any]) -> Properties:
    """The properties of a retry or dead-letter copy of a delivery that had ``props``: the
    same, persistent, with the ``extra`` headers."""
    headers = {**dict(props.headers or {}), **extra}
    return Properties(
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        headers=headers,
        delivery_mode=2,
        priority=props.priority,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        expiration=props.expiration,
        message_id=props.message_id,
        timestamp=props.timestamp,
        type=props.type,
        app_id=props.app_id,
    )
