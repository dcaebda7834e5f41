"""The time every stored row is stamped with."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    """Now, as an aware UTC datetime (what :class:`~rabbitry.storage.columns.UTCDateTime`
    columns take)."""
    return dt.datetime.now(dt.UTC)
