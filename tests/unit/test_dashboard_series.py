"""The dashboard's series (pure): rates from counters, the ring buffer's bound, the cap on lines."""

from __future__ import annotations

import pytest

from rabbitry.backoffice.series import (
    MAX_SERIES,
    QueueSample,
    Reading,
    Series,
    counter_totals,
    gateway_gauges,
)


def test_counters_become_rates_per_second_between_readings() -> None:
    series = Series(10)
    series.add(Reading(at=100.0, counters={("acked", "q"): 10.0}))
    series.add(Reading(at=102.0, counters={("acked", "q"): 30.0}))
    series.add(Reading(at=104.0, counters={("acked", "q"): 30.0}))
    assert series.document(2.0)["acked"] == {"q": [None, 10.0, 0.0]}


def test_a_counter_that_went_down_gives_no_rate_for_that_step() -> None:
    series = Series(10)
    series.add(Reading(at=0.0, counters={("delivered", "q"): 50.0}))
    series.add(Reading(at=1.0, counters={("delivered", "q"): 3.0}))  # the process restarted
    series.add(Reading(at=2.0, counters={("delivered", "q"): 5.0}))
    assert series.document(1.0)["delivered"] == {"q": [None, None, 2.0]}


def test_the_ring_buffer_keeps_the_last_readings_only() -> None:
    series = Series(3)
    for n in range(5):
        series.add(Reading(at=float(n), queues={"q": QueueSample(n, 1, None)}))
    document = series.document(1.0)
    assert document["t"] == [2.0, 3.0, 4.0]
    assert document["depth"] == {"q": [2, 3, 4]}
    assert document["dead_letters"] == {}  # q has no dead-letter queue


def test_a_chart_keeps_the_busiest_lines_only() -> None:
    series = Series(4)
    queues = {f"q{n:02}": QueueSample(n, 0, 0) for n in range(MAX_SERIES + 5)}
    series.add(Reading(at=1.0, queues=queues))
    depth = series.document(1.0)["depth"]
    assert len(depth) == MAX_SERIES
    assert "q16" in depth and "q00" not in depth


def test_prometheus_samples_are_summed_over_processes_and_keyed_by_label() -> None:
    samples = [
        ("rabbitry_published_total", {"target": "ns.events"}, 4.0),
        ("rabbitry_published_total", {"target": "ns.events"}, 6.0),  # a second process
        ("rabbitry_acked_total", {"queue": "ns.q"}, 2.0),
        ("rabbitry_acked_created", {"queue": "ns.q"}, 1e9),  # not a count
        ("rabbitry_relayed_total", {}, 7.0),
        ("rabbitry_chat_sockets", {"gateway": "g1"}, 3.0),
        ("rabbitry_chat_rooms", {"gateway": "g1"}, 2.0),
    ]
    assert counter_totals(samples) == {
        ("published", "ns.events"): 10.0,
        ("acked", "ns.q"): 2.0,
        ("relayed", ""): 7.0,
    }
    assert gateway_gauges(samples) == {"g1": (3, 2)}


def test_the_latest_reading_gives_the_gateways_and_problems() -> None:
    series = Series(2)
    series.add(Reading(at=1.0, gateways={"g": (1, 1)}))
    series.add(Reading(at=2.0, gateways={"g": (5, 2)}, problems=("broker: down",)))
    document = series.document(1.0)
    assert document["gateways"] == {"sockets": {"g": 5}, "rooms": {"g": 2}}
    assert document["gateway_sockets"] == {"g": [1, 5]}
    assert document["problems"] == ["broker: down"]


def test_a_series_needs_room_for_a_rate() -> None:
    with pytest.raises(ValueError):
        Series(1)


def test_every_gateway_of_a_process_is_a_label_of_the_chat_gauges() -> None:
    from prometheus_client import generate_latest

    from rabbitry.metrics import GATEWAYS, REGISTRY

    GATEWAYS.add("test-gw-a", lambda: 3, lambda: 2)
    GATEWAYS.add("test-gw-b", lambda: 1, lambda: 1)
    try:
        exposition = generate_latest(REGISTRY).decode()
        assert 'rabbitry_chat_sockets{gateway="test-gw-a"} 3.0' in exposition
        assert 'rabbitry_chat_rooms{gateway="test-gw-b"} 1.0' in exposition
    finally:
        GATEWAYS.discard("test-gw-a")
        GATEWAYS.discard("test-gw-b")
    assert "test-gw-a" not in generate_latest(REGISTRY).decode()
