"""The requeue command's positional arguments: QUEUE FROM TO, each optional, '' for blank."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from rabbitry.outbox.filters import FilterError, Origin, RequeueFilter, parse_filter

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_no_arguments_selects_everything() -> None:
    assert parse_filter(tz=UTC) == RequeueFilter()


def test_queue_alone() -> None:
    assert parse_filter("shipping_registered_publisher", tz=UTC).queue == (
        "shipping_registered_publisher"
    )


def test_seed_example_covers_the_whole_day_inclusive() -> None:
    result = parse_filter(
        "shipping_registered_publisher", "2024-07-01 00:00:00", "2024-07-01 23:59:59", tz=UTC
    )
    assert result.since == at("2024-07-01 00:00:00")
    # TO is inclusive of its whole second: 23:59:59.999 is still in.
    assert result.before == at("2024-07-02 00:00:00")


@pytest.mark.parametrize("blank", ["", "  ", "''", '""', None])
def test_blank_queue_with_dates(blank: str | None) -> None:
    result = parse_filter(blank, "2024-07-01 00:00:00", tz=UTC)
    assert result.queue is None
    assert result.since == at("2024-07-01 00:00:00")
    assert result.before is None


def test_from_alone_is_fine() -> None:
    assert parse_filter("", "2024-07-01 10:00:00", "", tz=UTC).before is None


def test_to_needs_from() -> None:
    with pytest.raises(FilterError, match="TO needs FROM"):
        parse_filter("q", "", "2024-07-01 23:59:59", tz=UTC)


@pytest.mark.parametrize(
    "bad",
    ["2024-07-01", "2024-07-01T00:00:00", "01/07/2024 00:00:00", "2024-13-01 00:00:00", "yes"],
)
def test_bad_dates_are_one_line_errors(bad: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter("q", bad, tz=UTC)
    message = str(info.value)
    assert "\n" not in message
    assert "FROM" in message and "YYYY-MM-DD HH:MM:SS" in message


def test_bad_to_names_to() -> None:
    with pytest.raises(FilterError, match=r"^TO "):
        parse_filter("q", "2024-07-01 00:00:00", "tomorrow", tz=UTC)


def test_to_before_from() -> None:
    with pytest.raises(FilterError, match="before FROM"):
        parse_filter("", "2024-07-02 00:00:00", "2024-07-01 00:00:00", tz=UTC)


def test_dates_are_read_in_the_given_zone_and_stored_as_utc() -> None:
    minus3 = dt.timezone(dt.timedelta(hours=-3))
    result = parse_filter("", "2024-07-01 00:00:00", tz=minus3)
    assert result.since == at("2024-07-01 03:00:00")
    assert result.since is not None and result.since.tzinfo == UTC


@pytest.fixture
def sao_paulo(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone is UTC-3 (no DST since 2019), whatever the machine's is."""
    monkeypatch.setenv("TZ", "America/Sao_Paulo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_local_zone_by_default(sao_paulo: None) -> None:
    result = parse_filter("", "2024-07-01 12:00:00", "2024-07-01 23:59:59")
    # On a UTC machine "local" and UTC agree: only another zone shows which one was used.
    assert result.since == at("2024-07-01 15:00:00")
    assert result.before == at("2024-07-02 03:00:00")  # TO is inclusive to the second


def test_queue_too_long() -> None:
    with pytest.raises(FilterError, match="QUEUE"):
        parse_filter("x" * 300, tz=UTC)


def test_origin_passes_through() -> None:
    assert parse_filter(tz=UTC, origin=Origin.MANUAL).origin is Origin.MANUAL


def test_describe() -> None:
    text = parse_filter("q", "2024-07-01 00:00:00", tz=UTC).describe()
    assert "queue=q" in text and "2024-07-01" in text
