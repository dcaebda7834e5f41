"""Re-publishing a batch of stored rows: one publish per exchange, with confirms and no
fallback, each row's outcome a :class:`~rabbitry.outbox.report.RowOutcome`.

A row of an exchange that does not exist fails alone, without a publish; a row whose stored
message cannot be rebuilt fails alone too.
"""

from __future__ import annotations

from collections.abc import Sequence

from rabbitry.errors import MessageError
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.message import OutboxMessage
from rabbitry.outbox.report import RowOutcome


async def publish_rows(
    publisher: Publisher, rows: Sequence[OutboxMessage], exchanges: ExchangeCheck | None
) -> list[RowOutcome]:
    """Publish ``rows``; one outcome per row, in order. With ``exchanges``, rows of a missing
    exchange fail without a publish, and a failed publish is told apart from its exchange
    having been deleted meanwhile."""
    outcomes: dict[int, RowOutcome] = {}
    groups: dict[str, list[tuple[OutboxMessage, Message]]] = {}
    missing = await exchanges.missing({r.exchange for r in rows}) if exchanges else set()
    for row in rows:
        error: str | None
        if row.exchange in missing:
            outcomes[row.id] = RowOutcome(row, no_exchange(row.exchange), tried=False)
            continue
        try:
            groups.setdefault(row.exchange, []).append((row, row.message()))
        except MessageError as exc:
            error = f"cannot rebuild the stored message: {exc}"
            outcomes[row.id] = RowOutcome(row, error, tried=False)
    # One publish per exchange: publishing to a missing exchange closes the channel, and
    # whatever else was in flight on it would fail (or, confirmed a moment before, be
    # reported failed and sent again by a later run).
    for exchange, group in groups.items():
        results = await publisher.publish_many(
            [(message, row.route()) for row, message in group], use_fallback=False
        )
        failed = any(r.status is not PublishStatus.PUBLISHED for r in results)
        gone = failed and exchanges is not None and await exchanges.recheck(exchange) is False
        for (row, _), result in zip(group, results, strict=True):
            error = None
            if result.status is not PublishStatus.PUBLISHED:
                error = no_exchange(exchange) if gone else result.error or "failed"
            # A publish to an exchange that is gone went nowhere: refused, as if never tried.
            outcomes[row.id] = RowOutcome(row, error, tried=not gone)
    return [outcomes[row.id] for row in rows]


def no_exchange(name: str) -> str:
    return f"exchange {name!r} does not exist"
