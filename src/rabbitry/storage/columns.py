"""Column types every part's tables share: UTC times and 64-bit ids.

Each part's tables keep the column types their migrations created (the schema is a contract:
other clients write these tables), so :class:`UTCDateTime` takes the storage as a flag:
``timezone=True`` is ``timestamp with time zone`` on PostgreSQL (the event store, sessions,
chat), ``timezone=False`` naive UTC (the outbox, whose rows a PHP client also writes). Either
way the Python side is the same: aware datetimes in, aware UTC datetimes out.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, DateTime, Dialect, Integer, TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend.

    A naive datetime is refused: which zone it meant is unknowable here (``parse_time`` and
    the outbox's filters turn user input into aware times at the edge). SQLite keeps no zone,
    so it stores naive UTC text, as does a ``timezone=False`` column everywhere.
    """

    # The class, not an instance: TypeDecorator builds the impl from __init__'s arguments only
    # from a class (an instance would be kept as it is, whatever ``timezone`` says).
    impl = DateTime
    cache_ok = True

    def __init__(self, timezone: bool = True) -> None:
        super().__init__(timezone=timezone)
        self.timezone = timezone

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        if not self.timezone or dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text, e.g. from a textual query
            value = dt.datetime.fromisoformat(value)
        assert isinstance(value, dt.datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


# SQLite only makes INTEGER PRIMARY KEY an auto-increment rowid alias, not BIGINT; PostgreSQL
# gets a 64-bit sequence.
BigId = BigInteger().with_variant(Integer(), "sqlite")
