"""The schema of a migrated database as plain data: what the migration tests compare.

Run as a script to write the snapshot a fresh database must match::

    python tests/schema_dump.py URL > tests/data/schema-<dialect>.json
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    tables: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        tables[table] = {
            "columns": [
                [c["name"], str(c["type"]), c["nullable"], str(c.get("default"))]
                for c in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table)["constrained_columns"],
            "indexes": sorted(
                [i["name"], i["column_names"], bool(i["unique"])]
                for i in inspector.get_indexes(table)
            ),
            "unique": sorted(
                [u["name"], u["column_names"]] for u in inspector.get_unique_constraints(table)
            ),
            "foreign_keys": sorted(
                [f["name"], f["constrained_columns"], f["referred_table"], f["referred_columns"]]
                for f in inspector.get_foreign_keys(table)
            ),
        }
    versions = [
        row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))
    ]
    return {"tables": tables, "alembic_version": sorted(versions)}


async def dump(url: str) -> dict[str, Any]:
    """The tables, columns, keys, indexes and Alembic version of the database at ``url``."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_schema)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(dump(sys.argv[1])), indent=1, sort_keys=True))
