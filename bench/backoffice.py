"""Back-office "Messages to enqueue" page time at a million ledger rows on PostgreSQL: keyset
pagination (what the page and `rabbitry outbox list` do) against OFFSET pagination, in one run.

The ledger holds ROWS rows over 30 days in 10 queues, 10% of them pending (the rest processed).
Each case fetches one page of 50 rows, newest first:
  first page      no filter, page 1 (both ways are the same query)
  depth D         no filter, the page after D rows: keyset from the key of row D vs OFFSET D
  queue+pending   one queue's pending rows, the page after half of them
Times are medians of ROUNDS rounds, through rabbitry.outbox.Outbox.page (keyset) and
the same statement with OFFSET instead of the key. Prints ms per page and OFFSET/keyset.

Usage: python bench/backoffice.py [--rows 1000000] [--rounds 7] [--pg DSN]
(DSN default postgresql://postgres@127.0.0.1:5432/postgres). A database
``rabbitry_bench_<hex>`` is created for the run and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import text

from common import POSTGRES_ADMIN, fresh_database
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.message import OutboxQuery, PageKey, State
from rabbitry.outbox.store import Outbox, page_statement
from rabbitry.storage import Database

LIMIT = 50
QUEUES = 10

# One statement seeds every row: generate_series is ~50x faster than inserting from Python.
SEED = text(
    """
    INSERT INTO outbox_messages (queue, exchange, routing_key, body, headers, message_id,
        created_at, processed, processed_at, attempts, last_error, origin)
    SELECT 'queue-' || ((i / 10) % :queues), 'bench.x', 'bench.key',
        '{"n": ' || i || ', "text": "a stored message body of some length"}',
        '{"rr_job": "bench"}'::json, md5(i::text),
        timestamp '2024-07-01' + (i * interval '30 days' / :rows),
        i % 10 <> 0,
        CASE WHEN i % 10 <> 0 THEN timestamp '2024-07-01' + (i * interval '30 days' / :rows)
             + interval '1 minute' END,
        CASE WHEN i % 10 <> 0 THEN 1 ELSE 0 END,
        CASE WHEN i % 10 = 0 THEN 'broker unreachable' END,
        'contingency'
    FROM generate_series(1, :rows) AS i
    """
)


async def median_ms(action: Callable[[], Awaitable[int]], rounds: int) -> float:
    await action()  # warm the cache and the connection pool: the page is read again and again
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        count = await action()
        times.append((time.perf_counter() - start) * 1000)
        assert count == LIMIT, f"a page of {count} rows, not {LIMIT}"
    return statistics.median(times)


async def key_at(db: Database, query: OutboxQuery, depth: int) -> PageKey:
    statement = page_statement(query, None, 0).limit(1).offset(depth - 1)
    async with db.engine.connect() as conn:
        row = (await conn.execute(statement)).one()
    return PageKey(row.created_at, row.id)


async def case(
    db: Database, name: str, query: OutboxQuery, depth: int, rounds: int
) -> tuple[str, float, float]:
    key = await key_at(db, query, depth) if depth else None

    async def keyset() -> int:
        page = await Outbox(db).page(query, after=key, limit=LIMIT)
        return len(page.messages)

    async def offset() -> int:
        statement = page_statement(query, None, LIMIT - 1).offset(depth)
        async with db.engine.connect() as conn:
            return len((await conn.execute(statement)).all())

    return name, await median_ms(keyset, rounds), await median_ms(offset, rounds)


async def main(rows: int, rounds: int, admin_dsn: str) -> None:
    async with fresh_database(admin_dsn) as db:
        started = time.perf_counter()
        async with db.engine.begin() as conn:
            await conn.execute(SEED, {"rows": rows, "queues": QUEUES})
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE outbox_messages"))
        print(f"seeded {rows:,} rows in {time.perf_counter() - started:.1f} s")
        everything = OutboxQuery()
        pending_one = OutboxQuery(RequeueFilter(queue="queue-3"), State.PENDING)
        per_queue_pending = rows // QUEUES // 10
        cases = [
            ("first page", everything, 0),
            (f"depth {rows // 10:,}", everything, rows // 10),
            (f"depth {rows // 2:,}", everything, rows // 2),
            (f"depth {rows * 9 // 10:,}", everything, rows * 9 // 10),
            (
                f"queue+pending depth {per_queue_pending // 2:,}",
                pending_one,
                per_queue_pending // 2,
            ),
        ]
        print(f"{'case':<34} {'keyset ms':>10} {'OFFSET ms':>10} {'OFFSET/keyset':>14}")
        for name, query, depth in cases:
            label, keyset_ms, offset_ms = await case(db, name, query, depth, rounds)
            ratio = offset_ms / keyset_ms if keyset_ms else float("inf")
            print(f"{label:<34} {keyset_ms:>10.2f} {offset_ms:>10.2f} {ratio:>13.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pg", default=POSTGRES_ADMIN)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.rounds, args.pg))
