"""The one UTC time column every part's tables use: aware times in, aware UTC out, naive refused,
whether the column stores the zone or naive UTC."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Column, DateTime, MetaData, Table, create_engine, insert, select
from sqlalchemy.exc import StatementError

from rabbitry.storage.clock import utcnow
from rabbitry.storage.columns import BigId, UTCDateTime

PARIS_SUMMER = dt.timezone(dt.timedelta(hours=2))


def table() -> Table:
    return Table(
        "times",
        MetaData(),
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("zoned", UTCDateTime(), nullable=True),
        Column("naive", UTCDateTime(timezone=False), nullable=True),
    )


@pytest.mark.parametrize("column", ["zoned", "naive"])
def test_an_aware_time_comes_back_as_the_same_instant_in_utc(column: str) -> None:
    times = table()
    engine = create_engine("sqlite://")
    times.metadata.create_all(engine)
    local = dt.datetime(2025, 7, 1, 14, 30, 5, 123456, tzinfo=PARIS_SUMMER)
    with engine.begin() as conn:
        conn.execute(insert(times).values({column: local}))
        stored = conn.execute(select(times.c[column])).scalar_one()
    assert stored == local
    assert stored.tzinfo is dt.UTC
    assert stored.hour == 12
    engine.dispose()


@pytest.mark.parametrize("column", ["zoned", "naive"])
def test_a_naive_time_is_refused_rather_than_guessed(column: str) -> None:
    times = table()
    engine = create_engine("sqlite://")
    times.metadata.create_all(engine)
    with engine.begin() as conn, pytest.raises(StatementError, match="naive datetime"):
        conn.execute(insert(times).values({column: dt.datetime(2025, 7, 1, 12)}))
    engine.dispose()


def test_the_column_type_keeps_the_storage_each_table_always_had() -> None:
    zoned, naive = UTCDateTime().impl, UTCDateTime(timezone=False).impl
    assert isinstance(zoned, DateTime) and zoned.timezone is True
    assert isinstance(naive, DateTime) and naive.timezone is False
    assert utcnow().tzinfo is dt.UTC
