"""The reconnect loop's pause: full jitter under a doubling bound, so clients a broker dropped
together come back spread out rather than in the same instant."""

from __future__ import annotations

import random

import pytest

from rabbitry.messaging.connection import backoff_pause


def test_the_bound_doubles_with_each_loss_in_a_row_up_to_the_cap() -> None:
    highest = [backoff_pause(n, 0.5, 10.0, draw=lambda: 1.0) for n in range(1, 8)]
    assert highest == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_the_pause_is_a_draw_between_zero_and_the_bound() -> None:
    assert backoff_pause(3, 0.5, 10.0, draw=lambda: 0.0) == 0.0
    assert backoff_pause(3, 0.5, 10.0, draw=lambda: 0.25) == 0.5


def test_clients_dropped_together_do_not_come_back_together() -> None:
    draw = random.Random(20).random
    pauses = [backoff_pause(1, 0.5, 10.0, draw=draw) for _ in range(1000)]
    assert all(0.0 <= p <= 0.5 for p in pauses)
    # Spread over the whole window: every tenth of it gets some of the thousand clients.
    buckets = {int(p / 0.05) for p in pauses}
    assert buckets == set(range(10))


def test_a_long_streak_does_not_overflow() -> None:
    assert backoff_pause(10_000, 0.5, 10.0, draw=lambda: 0.5) == 5.0


def test_failures_count_from_one() -> None:
    with pytest.raises(ValueError, match="counts from 1"):
        backoff_pause(0, 0.5, 10.0)
