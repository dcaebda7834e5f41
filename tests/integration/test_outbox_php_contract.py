"""The outbox table as a contract with the PHP companion (clients/php, ``Rabbitry\\Outbox``).

PHP writes pending rows into ``outbox_messages`` with plain SQL through PDO, and ``rabbitry
requeue``, the relay and the back-office read them. These tests pin what PHP relies on: the
columns it writes, their types and nullability, that every other column may be left out, the
form of ``created_at`` on SQLite (compared as text there), and that a row holding exactly the
JSON PHP writes is rebuilt into the message PHP built. The PHP side pins the same table in
clients/php/tests/Integration/OutboxTest.php.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from fixtures.outbox import Topic
from rabbitry.amqp.fieldtable import Int64
from rabbitry.messaging.envelope import Message, encode_headers
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

# name -> (SQLAlchemy type class, length, nullable), as clients/php/src/Outbox.php writes them.
PHP_COLUMNS: dict[str, tuple[type[Any], int | None, bool]] = {
    "queue": (sa.String, 511, False),
    "exchange": (sa.String, 255, False),
    "routing_key": (sa.String, 255, False),
    "body": (sa.Text, None, False),
    "headers": (sa.JSON, None, False),
    "message_id": (sa.String, 255, False),
    "created_at": (sa.DateTime, None, False),
    "processed": (sa.Boolean, None, False),
    "attempts": (sa.Integer, None, False),
    "last_error": (sa.Text, None, True),
    "origin": (sa.String, 16, False),
}

# Outbox::headersToJson of new Message('App\Jobs\SendEmail', ['to' => 'é@example.com'],
# id: ID, headers: ['attempts' => ['0']], pipeline: 'emails', tenant: 'acme', extra: [...]).
ID = "0b6f2a64-6d0e-4a8a-9c55-7a5b3f3c2b11"
PHP_HEADERS = (
    '{"rr_id":"0b6f2a64-6d0e-4a8a-9c55-7a5b3f3c2b11","rr_job":"App\\\\Jobs\\\\SendEmail",'
    '"rr_pipeline":"emails","rr_headers":{"$bytes":"{\\"attempts\\":[\\"0\\"]}"},"rr_delay":0,'
    '"rr_priority":10,"rr_auto_ack":false,"x-tenant":"acme","x-trace":"abc","x-count":3,'
    '"x-when":{"$datetime":"2025-02-06T09:30:00+00:00"}}'
)
PHP_BODY = '{"to":"é@example.com"}'


def _columns(connection: Connection) -> dict[str, dict[str, Any]]:
    return {c["name"]: dict(c) for c in sa.inspect(connection).get_columns("outbox_messages")}


async def test_the_outbox_table_has_the_columns_php_writes(db: Database) -> None:
    async with db.engine.connect() as connection:
        columns = await connection.run_sync(_columns)
        primary_key = await connection.run_sync(
            lambda c: sa.inspect(c).get_pk_constraint("outbox_messages")["constrained_columns"]
        )
    for name, (kind, length, nullable) in PHP_COLUMNS.items():
        column = columns[name]
        assert isinstance(column["type"], kind), (name, column["type"])
        assert getattr(column["type"], "length", None) == length, name
        assert column["nullable"] is nullable, name
    # The id is generated: INTEGER PRIMARY KEY (the rowid) on SQLite, a sequence on PostgreSQL.
    assert isinstance(columns["id"]["type"], sa.Integer)
    assert primary_key == ["id"]
    if db.engine.dialect.name == "postgresql":
        assert "nextval" in str(columns["id"]["default"]) or columns["id"].get("identity")
    # PHP leaves every other column out of its INSERT: each must accept that.
    for name, column in columns.items():
        if name not in PHP_COLUMNS and name != "id":
            assert column["nullable"] or column["default"] is not None, name


async def test_sqlite_stores_times_as_the_text_php_writes(tmp_path: Any) -> None:
    # On SQLite, created_at is text compared as text (requeue's FROM/TO, keyset pages): PHP
    # must write SQLAlchemy's exact form, 'YYYY-MM-DD HH:MM:SS.ffffff', microseconds always.
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'outbox.db'}")
    try:
        await db.upgrade()
        await Outbox(db).store([(Topic("t", "", "q").route("q"), Message("t", {}), "down")])
        async with db.engine.connect() as connection:
            stored = (
                await connection.execute(sa.text("SELECT created_at FROM outbox_messages"))
            ).scalar_one()
    finally:
        await db.close()
    assert isinstance(stored, str)
    assert (
        dt.datetime.strptime(stored, "%Y-%m-%d %H:%M:%S.%f").strftime("%Y-%m-%d %H:%M:%S.%f")
        == stored
    )


async def test_a_row_as_php_writes_it_is_the_message_php_built(db: Database) -> None:
    created = dt.datetime(2026, 1, 2, 3, 4, 5, 600_000)  # naive UTC, as PHP writes it
    async with db.engine.begin() as connection:
        await connection.execute(
            sa.text(
                "INSERT INTO outbox_messages (queue, exchange, routing_key, body, headers,"
                " message_id, created_at, processed, attempts, last_error, origin) VALUES"
                " (:queue, :exchange, :routing_key, :body, :headers, :message_id, :created_at,"
                " false, 0, :last_error, 'contingency')"
            ).bindparams(
                sa.bindparam("headers", type_=sa.JSON()),
                sa.bindparam("created_at", type_=sa.DateTime()),
            ),
            {
                "queue": "/emails",
                "exchange": "",
                "routing_key": "emails",
                "body": PHP_BODY,
                "headers": json.loads(PHP_HEADERS),
                "message_id": ID,
                "created_at": created,
                "last_error": "broker error: cannot connect",
            },
        )
    ledger = Outbox(db)
    window = RequeueFilter(
        since=created.replace(tzinfo=dt.UTC),
        before=created.replace(tzinfo=dt.UTC) + dt.timedelta(seconds=1),
    )
    (row,) = await ledger.rows(window)
    message = row.message()

    assert (row.queue, row.route().routing_key, row.origin, row.created_at) == (
        "/emails",
        "emails",
        "contingency",
        created.replace(tzinfo=dt.UTC),
    )
    assert (message.id, message.type, message.pipeline, message.tenant) == (
        ID,
        "App\\Jobs\\SendEmail",
        "emails",
        "acme",
    )
    assert message.headers == {"attempts": ("0",)}
    assert message.body() == PHP_BODY.encode()
    assert message.payload == {"to": "é@example.com"}
    # Re-sent with RoadRunner's types: rr_headers as bytes, integers as signed 64-bit.
    table = encode_headers(message)
    assert table["rr_headers"] == b'{"attempts":["0"]}'
    assert isinstance(table["rr_delay"], Int64) and isinstance(table["rr_priority"], Int64)
    assert table["x-count"] == 3 and table["x-trace"] == "abc"
    assert table["x-when"] == dt.datetime(2025, 2, 6, 9, 30, tzinfo=dt.UTC)
