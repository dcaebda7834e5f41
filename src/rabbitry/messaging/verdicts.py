"""What became of a sent message, in words: the broker's outcome and, when it is not an ack,
why (a :data:`Verdict`), and the reasons' vocabulary that tells a broker refusing a message
from a broker being unavailable. Pure, no I/O.
"""

from __future__ import annotations

from rabbitry.amqp.base import BaseLink, PublishOutcome

BLOCKED = "blocked by the broker (memory/disk alarm)"

REFUSED = "refused by the broker"
"""How the reason of a message the broker refused begins (no such exchange, access refused,
a precondition): the broker is fine, the message is not, and sending it again as it is fails
again until someone changes the topology or the permissions."""
UNROUTABLE = "unroutable"
"""How the reason of a mandatory message no queue took begins (``basic.return``)."""


def is_refusal(reason: str) -> bool:
    """Whether a failure's ``reason`` is the broker refusing the message (:data:`REFUSED`,
    :data:`UNROUTABLE`) rather than the broker being unavailable (down, blocked, slow,
    nacking): only the latter goes away by waiting."""
    return reason.startswith((REFUSED, UNROUTABLE))


Verdict = tuple[PublishOutcome, str]
"""What became of one message: the broker's outcome, and why when it is not ``ACKED``."""

# Reply codes that blame the message, not the broker: access refused, not found, precondition.
CALLER_ERRORS = frozenset({403, 404, 406})

ACKED: Verdict = (PublishOutcome.ACKED, "")
_REASONS = {
    PublishOutcome.NACKED: "broker nacked the message",
    PublishOutcome.RETURNED: f"{UNROUTABLE}: no queue is bound for this exchange and routing key",
}


def verdict(link: BaseLink, outcome: PublishOutcome) -> Verdict:
    """The verdict of a publish on ``link`` the broker answered with ``outcome`` (a refusal's
    reason is the error the link closed with)."""
    if outcome is PublishOutcome.ACKED:
        return ACKED
    if outcome is PublishOutcome.REFUSED:
        return (outcome, f"{REFUSED}: {link.error}")
    return (outcome, _REASONS.get(outcome, ""))
