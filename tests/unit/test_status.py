"""What ``rabbitry status`` decides from its readings (pure), and the nodes of a cluster URL."""

from __future__ import annotations

import datetime as dt

import pytest

from rabbitry.app.status import NodeReading, QueueReading, Readings, attention, report
from rabbitry.errors import ConfigError
from rabbitry.messaging.nodes import node_urls

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)
UP = [NodeReading("h1:5672")]


def test_a_healthy_reading_needs_nothing() -> None:
    readings = Readings(UP, [QueueReading("ns.module.workflow", 3, 0, 0)])
    assert attention(readings) == []
    assert report(readings, NOW)["ok"] is True


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        (
            Readings([NodeReading("h1:5672"), NodeReading("h2:5672", "refused")]),
            ["broker node h2:5672 unreachable: refused"],
        ),
        (Readings(UP, broker_error="gone"), ["broker: gone"]),
        (Readings(UP, database_error="no tables"), ["database: no tables"]),
        (
            Readings(UP, [QueueReading("ns.q", None, None)]),
            ["queue ns.q is not declared (run: rabbitry topology declare)"],
        ),
        (Readings(UP, [QueueReading("ns.q", 0, 2, 4)]), ["4 dead letter(s) in ns.q.dlq"]),
        (
            Readings(UP, [QueueReading("ns.tenant.a.removals", 0, 0, 0, tenant="a")]),
            ["tenant a has no DISPATCH consumer on ns.tenant.a.removals"],
        ),
        (Readings(UP, pending={"a": 2, "b": 1}), ["3 message(s) pending in the outbox"]),
        (
            Readings(UP, invalid_tenants=["-x"]),
            ["tenant row with an invalid name, served by no one: '-x'"],
        ),
    ],
)
def test_each_problem_needs_attention(readings: Readings, expected: list[str]) -> None:
    assert attention(readings) == expected
    document = report(readings, NOW)
    assert document["ok"] is False
    assert document["attention"] == expected


def test_a_tenant_with_a_consumer_and_a_work_queue_without_one_are_fine() -> None:
    readings = Readings(
        UP,
        [
            QueueReading("ns.tenant.a.removals", 0, 1, 0, tenant="a"),
            QueueReading("ns.chat.history", 5, 0, 0),  # a part this deployment does not run
        ],
    )
    assert attention(readings) == []
    assert report(readings, NOW)["tenants_without_consumer"] == []


def test_the_report_gives_the_oldest_pending_row_and_its_age() -> None:
    oldest = NOW - dt.timedelta(minutes=5)
    outbox = report(Readings(UP, pending={"b": 1, "a": 2}, oldest_pending=oldest), NOW)["outbox"]
    assert outbox == {
        "pending": 3,
        "pending_by_queue": {"a": 2, "b": 1},
        "oldest_pending": "2026-01-02T11:55:00+00:00",
        "oldest_age_seconds": 300.0,
    }


def test_node_urls_keep_everything_but_the_host() -> None:
    url = "amqps://u:p%40ss@h1:5671,[::1]:5673,h3/v%2Fh?name=app&heartbeat=5"
    assert node_urls(url) == [
        ("h1:5671", "amqps://u:p%40ss@h1:5671/v%2Fh?name=app&heartbeat=5"),
        ("[::1]:5673", "amqps://u:p%40ss@[::1]:5673/v%2Fh?name=app&heartbeat=5"),
        ("h3:5671", "amqps://u:p%40ss@h3:5671/v%2Fh?name=app&heartbeat=5"),
    ]


def test_node_urls_of_a_single_host_and_of_no_credentials() -> None:
    assert node_urls("amqp://h") == [("h:5672", "amqp://h:5672")]


def test_node_urls_refuse_a_bad_url() -> None:
    with pytest.raises(ConfigError):
        node_urls("http://h")
