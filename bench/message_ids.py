"""Message ids and the database: PostgreSQL's CPU per stored event with random (version 4)
message ids against time-ordered (version 7) ones, as the workflow worker writes them.

Two event stores grow side by side in one fresh database, each written the worker's way
(``append_rows_postgresql``: one call per batch of 250, heads known), 1,000 entities, the same
JSON data; they differ only in how their message ids are made: ``uuid.uuid4()`` (what Rabbitry
made before) or ``new_id()`` (what it makes now). The rounds alternate which goes first. Each
round adds N events to each: the figures per round show how the cost grows with the table.

Usage: python bench/message_ids.py [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from common import create_database, postgres_cpu
from rabbitry.events.incoming import Row
from rabbitry.events.postgresql_writer import Heads, append_rows_postgresql
from rabbitry.messaging.envelope import new_id
from rabbitry.storage import Database

BATCH = 250
ENTITIES = 1000
KINDS: dict[str, tuple[str, Callable[[], str]]] = {
    # label: (entity name, id maker)
    "random (v4)": ("bench.random", lambda: str(uuid.uuid4())),
    "time-ordered (v7)": ("bench.ordered", new_id),
}


def rows(n: int, entity: str, make_id: Callable[[], str]) -> list[Row]:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return [
        (
            entity,
            i % ENTITIES,
            "updated",
            "42",
            json.dumps({"n": i, "status": "active"}),
            make_id(),
            now,
        )
        for i in range(n)
    ]


async def write(database: Database, heads: Heads, batch_rows: list[Row]) -> None:
    for start in range(0, len(batch_rows), BATCH):
        await append_rows_postgresql(database, batch_rows[start : start + BATCH], heads)


async def main(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url, drop = await create_database("postgresql", Path(tmp))
        database = Database(url)
        try:
            await database.upgrade()
            heads = {label: Heads() for label in KINDS}
            for label, (entity, make_id) in KINDS.items():  # every entity has a head
                await write(database, heads[label], rows(ENTITIES, entity, make_id))
            figures: dict[str, list[tuple[float, float]]] = {label: [] for label in KINDS}
            for round_number in range(rounds):
                order = list(KINDS.items())
                for label, (entity, make_id) in order if round_number % 2 == 0 else order[::-1]:
                    batch_rows = rows(n, entity, make_id)  # made before the clock starts
                    pg_before, started = postgres_cpu(), time.perf_counter()
                    await write(database, heads[label], batch_rows)
                    seconds = time.perf_counter() - started
                    pg_us = (postgres_cpu() - pg_before) / n * 1e6
                    figures[label].append((pg_us, n / seconds))
        finally:
            await database.close()
            await drop()
    print(
        f"\nevents stored by the worker's call, {n} per round per id kind, {rounds} rounds"
        " (each table grows by that much a round)"
    )
    print(
        f"{'message ids':20} {'PostgreSQL CPU us/event, per round':>50} {'median':>7} {'ev/s':>8}"
    )
    for label, values in figures.items():
        per_round = " ".join(f"{pg:5.1f}" for pg, _ in values)
        pg = statistics.median(pg for pg, _ in values)
        rate = statistics.median(r for _, r in values)
        print(f"{label:20} {per_round:>50} {pg:7.1f} {rate:8,.0f}")
    random_pg = [pg for pg, _ in figures["random (v4)"]]
    ordered_pg = [pg for pg, _ in figures["time-ordered (v7)"]]
    print(
        "time-ordered vs random, PostgreSQL CPU per event: "
        f"{statistics.median(ordered_pg) / statistics.median(random_pg):.2f}x overall, "
        f"{ordered_pg[-1] / random_pg[-1]:.2f}x in the last round"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds))
