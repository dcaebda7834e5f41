"""Sharing the event-sourcing partitions: a worker holding more than its share hands one over."""

from __future__ import annotations

import pytest

from rabbitry.events.partitions import share, to_hand_over


@pytest.mark.parametrize(
    ("partitions", "workers", "most"),
    [(4, 1, 4), (4, 2, 2), (4, 3, 2), (4, 4, 1), (4, 6, 1), (5, 2, 3), (64, 3, 22), (4, 0, 4)],
)
def test_a_workers_share_is_the_partitions_over_the_workers_rounded_up(
    partitions: int, workers: int, most: int
) -> None:
    assert share(partitions, workers) == most


def test_the_only_worker_keeps_every_partition() -> None:
    assert not to_hand_over({0, 1, 2, 3}, [1, 1, 1, 1], 4)


def test_a_worker_active_on_more_than_its_share_hands_one_over() -> None:
    # Two workers (two consumers on some queue): two partitions each.
    assert to_hand_over({0, 1, 2}, [2, 2, 2, 2], 4)
    assert not to_hand_over({0, 1}, [2, 2, 2, 2], 4)
    # A partition being handed over has one consumer for a moment: the most any has counts.
    assert to_hand_over({0, 1, 2}, [2, 1, 2, 2], 4)


def test_partitions_without_deliveries_are_kept() -> None:
    # Idle partitions deliver nothing: whether they are active here is unknown, and moot.
    assert not to_hand_over(set(), [2, 2, 2, 2], 4)
    assert not to_hand_over({3}, [3, 3, 3, 3], 4)
