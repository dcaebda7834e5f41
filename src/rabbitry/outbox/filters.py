"""Which pending messages a requeue run takes: parsing ``[QUEUE] [FROM] [TO]``. Pure, no I/O.

The arguments of ``rabbitry requeue QUEUE FROM TO``: each is optional and positional,
``''`` leaves one blank so that a later one can be given, TO needs FROM (FROM alone is fine),
and dates are ``YYYY-MM-DD HH:MM:SS``. TO is inclusive of its whole second, so
``'2024-07-01 00:00:00' '2024-07-01 23:59:59'`` covers the entire day.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from rabbitry.errors import Invalid
from rabbitry.messaging.verdicts import is_refusal

DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
DATE_HINT = "YYYY-MM-DD HH:MM:SS"
MAX_QUEUE_LENGTH = 255


class Origin(StrEnum):
    """Why a message is in the outbox."""

    CONTINGENCY = "contingency"  # the broker could not take it (or rabbit_active=false)
    MANUAL = "manual"  # a user sent it by hand with manual_processing_mode=db


class Failure(StrEnum):
    """Why the broker did not take a stored message, last time it was tried."""

    REFUSED = "refused"  # no such exchange, unroutable, access refused: waiting won't help
    UNAVAILABLE = "unavailable"  # down, blocked, slow, nacking: an outage

    @classmethod
    def of(cls, reason: str) -> Failure:
        return cls.REFUSED if is_refusal(reason) else cls.UNAVAILABLE


class FilterError(Invalid):
    """The requeue arguments are invalid; the message is one line, fit for the user."""


@dataclass(frozen=True, slots=True)
class RequeueFilter:
    """Pending rows to take. Bounds are aware UTC datetimes: ``since <= created_at < before``."""

    queue: str | None = None
    since: dt.datetime | None = None
    before: dt.datetime | None = None
    origin: Origin | None = None
    # These rows only (the back-office's "requeue selected"); None: any row.
    ids: frozenset[int] | None = None

    def describe(self) -> str:
        """A short human description, for logs and summaries."""
        parts = [f"queue={self.queue}" if self.queue else "all queues"]
        if self.ids is not None:
            parts.append(f"{len(self.ids)} selected row(s)")
        if self.since is not None:
            parts.append(f"from {self.since.isoformat()}")
        if self.before is not None:
            parts.append(f"before {self.before.isoformat()}")
        if self.origin is not None:
            parts.append(f"origin={self.origin}")
        return ", ".join(parts)


def parse_filter(
    queue: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    *,
    tz: dt.tzinfo | None = None,
    origin: Origin | None = None,
) -> RequeueFilter:
    """Build a :class:`RequeueFilter` from the command's positional arguments.

    ``None``, ``''`` and blanks mean "not given". Dates are read in ``tz`` (the machine's local
    time zone when ``None``, like the back-office shows them) and converted to UTC.
    Raises :class:`FilterError` with a one-line reason.
    """
    name = _blank_to_none(queue)
    if name is not None and len(name) > MAX_QUEUE_LENGTH:
        raise FilterError(f"QUEUE is longer than {MAX_QUEUE_LENGTH} characters")
    since = _parse_date("FROM", date_from, tz)
    until = _parse_date("TO", date_to, tz)
    if until is not None and since is None:
        raise FilterError("TO needs FROM: give FROM as well (FROM may be given alone)")
    if since is not None and until is not None and until < since:
        raise FilterError(f"TO ({date_to}) is before FROM ({date_from})")
    before = _after(until) if until is not None else None
    return RequeueFilter(queue=name, since=since, before=before, origin=origin)


def _after(until: dt.datetime) -> dt.datetime | None:
    """The exclusive bound just after ``until``'s second; none at the end of the calendar."""
    try:
        return until + dt.timedelta(seconds=1)
    except OverflowError:
        return None  # TO is 9999-12-31 23:59:59: every row is before it


def _blank_to_none(value: str | None) -> str | None:
    if value is None:
        return None
    stripped = value.strip()
    # A shell that passes the quotes through (''), e.g. from a cron line, means blank too.
    if stripped in ("", "''", '""'):
        return None
    return stripped


def _parse_date(what: str, value: str | None, tz: dt.tzinfo | None) -> dt.datetime | None:
    text = _blank_to_none(value)
    if text is None:
        return None
    try:
        naive = dt.datetime.strptime(text, DATE_FORMAT)
    except ValueError:
        raise FilterError(f"{what} {text!r} is not a date in the form {DATE_HINT}") from None
    try:
        # A naive datetime's astimezone() reads it in the machine's local zone (DST included).
        local = naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()
        return local.astimezone(dt.UTC)
    except (OverflowError, ValueError, OSError):
        # Within hours of year 1 or year 9999 the conversion leaves the calendar (how depends
        # on the zone): such a bound means "from the beginning" or "to the end".
        edge = dt.datetime.min if naive.year == dt.MINYEAR else dt.datetime.max
        return edge.replace(tzinfo=dt.UTC)
