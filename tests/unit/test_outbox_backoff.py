"""How long the relay leaves a failed row alone: doubling, capped at a minute."""

from __future__ import annotations

import datetime as dt

from rabbitry.outbox.store import MAX_BACKOFF, backoff


def test_backoff_doubles_then_caps() -> None:
    seconds = [backoff(n).total_seconds() for n in range(1, 9)]
    assert seconds[:5] == [2, 4, 8, 16, 32]
    assert max(seconds) == MAX_BACKOFF.total_seconds() == 60
    assert backoff(10_000) == MAX_BACKOFF


def test_backoff_of_nonsense_is_the_first_step() -> None:
    assert backoff(0) == backoff(-3) == dt.timedelta(seconds=2)
