"""What a requeue run reports: each row's outcome (:class:`RowOutcome`) and the run's tally
(:class:`RequeueReport`). Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rabbitry.outbox.filters import Failure
from rabbitry.outbox.message import OutboxMessage

MAX_DISTINCT_ERRORS = 20


@dataclass(frozen=True, slots=True)
class RowOutcome:
    row: OutboxMessage
    error: str | None = None
    # False for a row failed without a publish (its exchange is missing, it is corrupt), or
    # whose publish went nowhere (its exchange was deleted).
    tried: bool = True

    @property
    def published(self) -> bool:
        return self.error is None

    @property
    def failure(self) -> Failure:
        """The kind of failure: a row failed without a publish (no such exchange, corrupt)
        will not go as it is, whatever the broker's state."""
        return Failure.REFUSED if not self.tried else Failure.of(self.error or "")


@dataclass(slots=True)
class RequeueReport:
    published: int = 0
    failed: int = 0
    # Rows another run holds (leased when this one reached them, or taken over later).
    skipped: int = 0
    # Rows of this run left pending and untouched because it stopped before them.
    left: int = 0
    # Why the run ended before its last row (None: it did not).
    stopped: str | None = None
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def stopped_early(self) -> bool:
        return self.stopped is not None

    def summary(self) -> str:
        text = f"{self.published} published, {self.failed} failed"
        if self.skipped:
            text += f", {self.skipped} skipped (held by another run, which sends them)"
        if self.stopped is not None:
            text += f"; stopped early: {self.stopped}"
            if self.left:
                text += f"; {self.left} row(s) left pending, untouched"
        return text


Progress = Callable[[Sequence[RowOutcome]], None]


def tally(report: RequeueReport, outcomes: Sequence[RowOutcome]) -> int:
    """Count ``outcomes`` into ``report``; returns how many of them failed."""
    failed = 0
    for outcome in outcomes:
        if outcome.error is None:
            report.published += 1
            continue
        failed += 1
        # Errors are counted by text; a few distinct ones are enough to tell the user why.
        if outcome.error in report.errors or len(report.errors) < MAX_DISTINCT_ERRORS:
            report.errors[outcome.error] = report.errors.get(outcome.error, 0) + 1
    report.failed += failed
    return failed


def curable(outcome: RowOutcome) -> bool:
    """Whether ``outcome`` failed in a way that waiting cures (nacked, blocked, no confirm,
    connection lost), not one that refuses the row as it is."""
    return outcome.error is not None and outcome.failure is Failure.UNAVAILABLE


def wholly_failed(outcomes: Sequence[RowOutcome]) -> bool:
    """Every row failed, and some were sent: the broker may be down."""
    return all(o.error is not None for o in outcomes) and any(o.tried for o in outcomes)
