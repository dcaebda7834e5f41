"""Retry policy: failed try number -> delay tier in milliseconds, or None to dead-letter."""

from __future__ import annotations

import dataclasses

import pytest

from rabbitry.messaging.retry import RetryPolicy


def test_default_policy_doubles_from_one_second() -> None:
    policy = RetryPolicy()
    assert [policy.delay_ms(n) for n in range(1, 5)] == [1000, 2000, 4000, 8000]
    assert policy.tiers_ms() == (1000, 2000, 4000, 8000)


def test_delays_are_capped_at_max_delay() -> None:
    policy = RetryPolicy(max_attempts=8, base_delay=1, factor=3, max_delay=30)
    assert [policy.delay_ms(n) for n in range(1, 8)] == [
        1000,
        3000,
        9000,
        27000,
        30000,
        30000,
        30000,
    ]


def test_tiers_are_distinct_and_ascending() -> None:
    policy = RetryPolicy(max_attempts=8, base_delay=1, factor=3, max_delay=30)
    assert policy.tiers_ms() == (1000, 3000, 9000, 27000, 30000)


def test_factor_one_is_a_single_fixed_tier() -> None:
    policy = RetryPolicy(max_attempts=4, base_delay=2.5, factor=1, max_delay=10)
    assert policy.tiers_ms() == (2500,)
    assert [policy.next_delay_ms(n) for n in (1, 2, 3)] == [2500, 2500, 2500]


def test_fractional_seconds_round_to_milliseconds() -> None:
    policy = RetryPolicy(max_attempts=3, base_delay=0.25, factor=1.5, max_delay=1)
    assert policy.tiers_ms() == (250, 375)


def test_next_delay_without_a_request_is_always_one_of_the_tiers() -> None:
    policy = RetryPolicy(max_attempts=10, base_delay=0.5, factor=2, max_delay=20)
    for attempt in range(1, 10):
        delay = policy.next_delay_ms(attempt)
        assert delay == policy.delay_ms(attempt)
        assert delay in policy.tiers_ms()


@pytest.mark.parametrize(
    ("requested", "tier"),
    [(0, 1000), (-5, 1000), (0.001, 1000), (1, 1000), (1.5, 2000), (4, 4000), (5, 8000)],
)
def test_requested_delay_picks_the_smallest_tier_that_is_long_enough(
    requested: float, tier: int
) -> None:
    assert RetryPolicy().next_delay_ms(1, requested) == tier


def test_requested_delay_longer_than_every_tier_waits_in_the_longest() -> None:
    assert RetryPolicy().next_delay_ms(2, requested=3600) == 8000


def test_requested_delay_ignores_the_attempt_number() -> None:
    policy = RetryPolicy()
    assert policy.next_delay_ms(1, requested=8) == policy.next_delay_ms(4, requested=8) == 8000


@pytest.mark.parametrize("attempt", [5, 6, 100])
def test_reaching_max_attempts_dead_letters(attempt: int) -> None:
    policy = RetryPolicy(max_attempts=5)
    assert policy.next_delay_ms(attempt) is None
    assert policy.next_delay_ms(attempt, requested=1) is None


def test_last_retry_is_the_try_before_max_attempts() -> None:
    assert RetryPolicy(max_attempts=5).next_delay_ms(4) == 8000


def test_one_attempt_means_no_retry_and_no_tiers() -> None:
    policy = RetryPolicy(max_attempts=1)
    assert policy.tiers_ms() == ()
    assert policy.next_delay_ms(1) is None


def test_large_max_attempts_stays_capped_instead_of_overflowing() -> None:
    # Settings.max_attempts has no upper bound, and 2.0 ** 1024 overflows a float.
    policy = RetryPolicy(max_attempts=2000, base_delay=1.0, factor=2.0, max_delay=300.0)
    assert policy.tiers_ms()[-1] == 300_000
    assert policy.next_delay_ms(1999) == 300_000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"base_delay": 0},
        {"base_delay": -1},
        {"base_delay": 10, "max_delay": 5},
        {"factor": 0.5},
        {"factor": 0},
    ],
    ids=repr,
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]  # wrong on purpose: refused at run time


def test_policy_is_frozen_and_hashable() -> None:
    policy = RetryPolicy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 9  # type: ignore[misc]  # frozen: the point of the test
    assert {policy, RetryPolicy()} == {RetryPolicy()}
