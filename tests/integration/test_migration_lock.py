"""Many processes started together on a fresh database all come up: migrations run under a
lock (PostgreSQL's advisory lock, a file lock for SQLite), the first migrates, the others find
nothing left to do."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from helpers import eventually_true, scratch_database
from rabbitry.storage import Database

PROCESSES = 4
_WAITING_FOR_ADVISORY_LOCKS = sa.text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)

# Each process imports everything, says it is ready, and migrates when the test releases all
# of them at once (a line on stdin), so the migrations really overlap.
_MIGRATE = """
import asyncio, sys
from rabbitry.storage import Database

async def main() -> None:
    database = Database(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        await database.upgrade()
    finally:
        await database.close()

asyncio.run(main())
"""


async def _migrate_together(url: str) -> list[tuple[int, str]]:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _MIGRATE,
            url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 60)
            assert line == b"ready\n", line
        for process in processes:  # the start gate
            assert process.stdin is not None
            process.stdin.write(b"go\n")
        outcomes = []
        for process in processes:
            _, stderr = await asyncio.wait_for(process.communicate(), 120)
            outcomes.append((process.returncode or 0, stderr.decode()[-2000:]))
        return outcomes
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
async def test_processes_started_together_on_a_fresh_database_all_come_up(
    kind: str, tmp_path: Path
) -> None:
    async with scratch_database(kind, tmp_path) as url:
        outcomes = await _migrate_together(url)
        assert [code for code, _ in outcomes] == [0] * PROCESSES, outcomes
        database = Database(url)
        try:
            async with database.engine.connect() as connection:
                versions = (
                    await connection.execute(sa.text("SELECT * FROM alembic_version"))
                ).all()
                tables = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        finally:
            await database.close()
        assert len(versions) == 1
        assert "outbox_messages" in tables, tables


async def test_a_process_waits_for_the_migration_lock_another_holds(tmp_path: Path) -> None:
    async with scratch_database("postgresql", tmp_path) as url:
        holder, waiter = Database(url), Database(url)
        try:
            async with holder._migration_lock():
                upgrade = asyncio.ensure_future(waiter.upgrade())
                # The waiter's lock request reaches the server and blocks there.
                async with holder.engine.connect() as connection:

                    async def waiting() -> bool:
                        count = await connection.scalar(_WAITING_FOR_ADVISORY_LOCKS)
                        return bool(count == 1)

                    await eventually_true(waiting, timeout=30, what="the waiter to queue")
                assert not upgrade.done()
            await asyncio.wait_for(upgrade, 60)
        finally:
            await holder.close()
            await waiter.close()
