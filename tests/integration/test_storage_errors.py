"""A database error as Rabbitry reports it (and logs it): the driver's reason on one line, never
the statement's parameters, which may be a user's data or a token's hash. Real SQLite and
PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from helpers import scratch_database
from rabbitry.errors import StorageError
from rabbitry.storage.database import Database

SECRET = "hunter2-not-for-logs"


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with scratch_database(request.param, tmp_path) as url:
        db = Database(url)
        try:
            yield db
        finally:
            await db.close()


async def test_a_failed_statement_is_one_line_with_the_reason_and_without_its_parameters(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rabbitry")
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    with pytest.raises(StorageError) as raised:
        async with database.connection() as connection:
            await connection.execute(
                text("SELECT * FROM no_such_table WHERE token_hash = :hash"), {"hash": SECRET}
            )
    message = str(raised.value)
    assert message.startswith("database error: ")
    assert "no_such_table" in message  # the driver's reason names the table
    assert message.endswith("is the database set up? `rabbitry db upgrade` creates its tables")
    assert "\n" not in message and SECRET not in message
    # Nor anywhere the exception goes: its cause as printed in a traceback, the log.
    assert SECRET not in str(raised.value.__cause__)
    assert SECRET not in caplog.text


async def test_a_refused_insert_keeps_the_row_out_of_the_message(database: Database) -> None:
    async with database.connection() as connection:
        await connection.execute(text("CREATE TABLE tokens (hash VARCHAR(64) PRIMARY KEY)"))
        await connection.execute(text("INSERT INTO tokens VALUES (:h)"), {"h": SECRET})
    with pytest.raises(StorageError) as raised:
        async with database.connection() as connection:
            await connection.execute(text("INSERT INTO tokens VALUES (:h)"), {"h": SECRET})
    assert "unique" in str(raised.value).lower()
    assert SECRET not in str(raised.value) and SECRET not in str(raised.value.__cause__)


async def test_other_errors_give_no_advice_on_migrations(database: Database) -> None:
    with pytest.raises(StorageError) as raised:
        async with database.connection() as connection:
            await connection.execute(text("SELECT 1 FROM"))  # a syntax error
    assert "upgrade" not in str(raised.value)
