"""The back-off: how long the relay leaves a row alone after it failed, by the failure's kind.
Pure, no I/O.

An outage is waited out in seconds; a refusal (no such exchange, unroutable) backs off far
longer: waiting does not cure it, and a row retried every few seconds forever only fills the
log.
"""

from __future__ import annotations

import datetime as dt

from rabbitry.outbox.filters import Failure

# Longest back-off the relay waits before retrying a row that failed; a user's requeue run
# ignores back-off and tries every pending row at once.
MAX_BACKOFF = dt.timedelta(seconds=60)
# The same for a row the broker refused: it waits for someone to fix the topology, and an
# hour is as long as a fixed exchange waits for the relay (`rabbitry requeue` does not wait).
REFUSED_FIRST_BACKOFF = dt.timedelta(seconds=30)
MAX_REFUSED_BACKOFF = dt.timedelta(hours=1)


def backoff(attempts: int, failure: Failure = Failure.UNAVAILABLE) -> dt.timedelta:
    """How long the relay leaves a row alone after its ``attempts``-th failure: doubling, from
    2 s up to a minute after an outage, from 30 s up to an hour after a refusal."""
    steps = min(max(attempts, 1), 16) - 1
    if failure is Failure.REFUSED:
        return min(REFUSED_FIRST_BACKOFF * (1 << steps), MAX_REFUSED_BACKOFF)
    return min(dt.timedelta(seconds=2.0 * 2**steps), MAX_BACKOFF)
