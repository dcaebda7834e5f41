"""Leases on ledger rows: renewing them before a publish, giving them back, and who holds what.

A requeue run (or the relay, or the change tracker) leases the rows it is about to publish:
``claim_token`` is the run's own random token, ``claimed_until`` when the lease ends. The token
is the run's fencing token: every write of a run (:meth:`Ledger.settle`, :func:`renew`,
:func:`release`) matches it, so once another run took a row over, nothing the first one does
touches it again.

* :func:`renew` is the check right before a publish: it extends the lease of the rows still
  leased with the token and returns them. A run that was paused past its lease (a stopped
  process, a long GC, a laptop lid) finds the rows another run took over missing from the
  answer and does not publish them: no duplicate.
* :func:`release` gives back every unsettled row of a token, whatever the run was doing when it
  stopped (a claim that completed after its task was cancelled included), so nothing waits for
  a lease to expire.
* :func:`held_elsewhere` counts the rows a run skipped because another run holds them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, or_, select, tuple_, update

from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.ledger import TABLE, Ledger
from rabbitry.outbox.ledger import _conditions as conditions
from rabbitry.outbox.models import PENDING_CLAUSE
from rabbitry.storage.clock import utcnow


async def renew(ledger: Ledger, token: str, ids: Sequence[int], lease: dt.timedelta) -> set[int]:
    """Extend the lease of rows ``ids`` still pending and leased with ``token`` to ``lease``
    from now; returns those ids (the others were taken over, or settled, by another run)."""
    if not ids:
        return set()
    statement = (
        update(TABLE)
        .where(TABLE.c.id.in_(ids), TABLE.c.claim_token == token, PENDING_CLAUSE)
        .values(claimed_until=utcnow() + lease)
        .returning(TABLE.c.id)
    )
    async with ledger._transaction() as conn:
        return {row.id for row in await conn.execute(statement)}


async def release(ledger: Ledger, token: str) -> int:
    """Give back every pending row still leased with ``token``; returns how many."""
    statement = (
        update(TABLE)
        .where(TABLE.c.claim_token == token, PENDING_CLAUSE)
        .values(claim_token=None, claimed_until=None)
    )
    async with ledger._transaction() as conn:
        return (await conn.execute(statement)).rowcount or 0


async def held_elsewhere(ledger: Ledger, where: RequeueFilter, max_id: int, token: str) -> int:
    """How many pending rows matching ``where`` (up to ``max_id``, where a run started) are
    leased by another token right now."""
    now = utcnow()
    statement = (
        select(func.count())
        .select_from(TABLE)
        .where(
            PENDING_CLAUSE,
            TABLE.c.id <= max_id,
            TABLE.c.claim_token.is_not(None),
            TABLE.c.claim_token != token,
            TABLE.c.claimed_until > now,
            *conditions(where),
        )
    )
    async with ledger._transaction() as conn:
        return int((await conn.execute(statement)).scalar_one())


async def untouched(
    ledger: Ledger, where: RequeueFilter, max_id: int, after: tuple[dt.datetime, int] | None
) -> int:
    """How many pending rows matching ``where`` (up to ``max_id``) come after ``after`` (a
    run's position, as (created_at, id)) and are not leased by anyone: what a run that
    stopped there left for the next one."""
    now = utcnow()
    statement = (
        select(func.count())
        .select_from(TABLE)
        .where(
            PENDING_CLAUSE,
            TABLE.c.id <= max_id,
            or_(TABLE.c.claim_token.is_(None), TABLE.c.claimed_until <= now),
            *conditions(where),
        )
    )
    if after is not None:
        statement = statement.where(tuple_(TABLE.c.created_at, TABLE.c.id) > tuple_(*after))
    async with ledger._transaction() as conn:
        return int((await conn.execute(statement)).scalar_one())
