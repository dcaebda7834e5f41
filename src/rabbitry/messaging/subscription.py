"""A subscription: what to consume from one queue and how (handlers by message type, a batch
handler, prefetch, concurrency, ordering), checked and its handlers resolved once, where it is
declared. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from rabbitry.messaging.envelope import Message
from rabbitry.messaging.payloads import AnyHandler, Handler, adapt

BatchHandler = Callable[[Sequence[Message]], Awaitable[Sequence[BaseException | None]]]


@dataclass(frozen=True)
class Subscription:
    """What to consume from one queue and how.

    ``handlers`` maps a message type (``rr_job``) to its handler; ``default`` takes the other
    types (without one, an unknown type is dead-lettered). A handler takes the
    :class:`Message`, or a payload it declares a type for (see
    :mod:`rabbitry.messaging.payloads`); what it returns is the reply when the message asked
    for one (``reply_to``). ``batch`` takes lists of up to ``batch_size`` messages
    instead and returns one outcome per message (``None`` = done); with ``concurrency`` set,
    that many batch calls run at once (default one), each started with the oldest deliveries
    waiting: the calls see the deliveries in order up to each call's first ``await``.
    ``prefetch``, ``concurrency`` and ``strict`` override the :class:`AmqpSettings` values.
    ``exclusive`` asks the broker for the queue to itself (``basic.consume`` exclusive): it
    refuses while another consumer has the queue, and the worker tries again after a pause.
    ``keep_order``, for a single-active-consumer queue: on stop, no ``basic.cancel`` and no
    requeue; what was started is finished and acked, the rest goes back when the link closes,
    and only then does the broker make another consumer active.
    ``idempotent``: running the handler twice on a message does what running it once does (a
    store keyed by message id). When the connection is lost, what was delivered is then
    finished rather than dropped: its acks are lost and the broker delivers it again, which
    does nothing; left to the broker, a quorum queue may give it back only after messages
    published later (after a cluster restart, seconds later).
    """

    queue: str
    handlers: Mapping[str, AnyHandler] = field(default_factory=dict)
    default: AnyHandler | None = None
    batch: BatchHandler | None = None
    batch_size: int = 100
    prefetch: int | None = None
    concurrency: int | None = None
    strict: bool | None = None  # None: AmqpSettings.strict_rr_job
    exclusive: bool = False
    # On a single-active-consumer queue: a stop never cancels the consumer, which would make a
    # standby one active while this one still stores what it holds (and it would overtake it);
    # it finishes what it started and hands the rest back by closing the link, after its acks.
    keep_order: bool = False
    idempotent: bool = False
    # The handlers as the consumer calls them (typed ones wrapped), resolved once, here, so a
    # handler whose annotations cannot be read fails where it is declared.
    resolved: Mapping[str, Handler] = field(init=False, repr=False, compare=False)
    resolved_default: Handler | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        resolved = {job: adapt(handler) for job, handler in self.handlers.items()}
        object.__setattr__(self, "resolved", resolved)
        default = None if self.default is None else adapt(self.default)
        object.__setattr__(self, "resolved_default", default)
        if self.prefetch is not None and not 1 <= self.prefetch <= 65535:
            raise ValueError("Subscription.prefetch must be between 1 and 65535")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("Subscription.concurrency must be at least 1")
        if self.batch_size < 1:
            raise ValueError("Subscription.batch_size must be at least 1")
