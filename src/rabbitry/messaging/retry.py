"""Pure retry policy: attempt number -> delay before the next try, or dead-letter.

Delays grow exponentially and are rounded to whole tiers so that each tier is one retry queue
(``Q.retry.<ms>``) with a fixed TTL: a per-message TTL in one shared queue would let a long
delay block the short ones behind it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``max_attempts`` counts every try, the first included: 5 means 1 try + 4 retries."""

    max_attempts: int = 5
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.base_delay <= 0 or self.max_delay < self.base_delay or self.factor < 1:
            raise ValueError("need 0 < base_delay <= max_delay and factor >= 1")

    def delay_ms(self, attempt: int) -> int:
        """Delay after failed try number ``attempt`` (1-based), in milliseconds."""
        try:
            seconds = min(self.base_delay * self.factor ** (attempt - 1), self.max_delay)
        except OverflowError:
            seconds = self.max_delay
        return round(seconds * 1000)

    def tiers_ms(self) -> tuple[int, ...]:
        """Every delay this policy can ask for, ascending: one retry queue each."""
        return tuple(sorted({self.delay_ms(n) for n in range(1, self.max_attempts)}))

    def next_delay_ms(self, attempt: int, requested: float | None = None) -> int | None:
        """The tier to wait in after failed try ``attempt``, or ``None`` to dead-letter.

        ``requested`` (seconds, from a handler's ``Retry(delay)``) picks the smallest tier that
        is at least that long, or the longest tier.
        """
        if attempt >= self.max_attempts:
            return None
        tiers = self.tiers_ms()
        if requested is None:
            return self.delay_ms(attempt)
        wanted = round(requested * 1000)
        return next((t for t in tiers if t >= wanted), tiers[-1])
