"""The parts' migrations: each part's revisions in its own package, one chain of the ids every
existing database records, the same schema as before they moved (a contract: other clients
write these tables), and an upgrade of an up-to-date database that changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from helpers import scratch_database
from rabbitry.app import registry
from rabbitry.storage import Database
from rabbitry.storage.migrations import Migrations, installed_locations
from schema_dump import dump

DATA = Path(__file__).resolve().parents[1] / "data"
PACKAGE = Path(__file__).resolve().parents[2] / "src" / "rabbitry"
# The revisions existing databases record, in order, and the part each belongs to.
CHAIN = [
    ("0001_outbox", "outbox"),
    ("0002_events", "events"),
    ("0003_chat", "chat"),
    ("0004_sessions", "sessions"),
    ("0005_backoffice", "outbox"),
    ("0006_chat_order", "chat"),
    ("0007_outbox_failure", "outbox"),
    ("0008_backoffice_logouts", "outbox"),
    ("0009_events_append", "events"),
    ("0010_chat_mark", "chat"),
    ("0011_events_append_rows", "events"),
]


def test_each_revision_lives_in_its_part_and_the_chain_keeps_its_ids() -> None:
    script = ScriptDirectory.from_config(registry.migrations().config("sqlite://"))
    walked = [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]
    assert walked == [revision for revision, _ in CHAIN]
    for revision, part in CHAIN:
        found = script.get_revision(revision)
        assert found is not None
        assert Path(found.path).parent == PACKAGE / part / "migrations"


def test_the_registry_names_every_migrations_folder_the_default_finds() -> None:
    assert sorted(registry.migrations().locations) == list(installed_locations())
    assert list(installed_locations()) == sorted(
        PACKAGE / part
        for part in (
            "chat/migrations",
            "events/migrations",
            "outbox/migrations",
            "sessions/migrations",
        )
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_fresh_database_gets_the_schema_it_always_had(kind: str, tmp_path: Path) -> None:
    expected = json.loads((DATA / f"schema-{kind}.json").read_text("utf-8"))
    async with scratch_database(kind, tmp_path) as url, Database(url) as db:
        await db.upgrade(migrations=registry.migrations())
        assert await dump(url) == expected
        # An up-to-date database (today's head) is left as it is.
        await db.upgrade()
        assert await dump(url) == expected


async def test_a_database_at_an_older_revision_is_brought_to_the_head(tmp_path: Path) -> None:
    expected = json.loads((DATA / "schema-sqlite.json").read_text("utf-8"))
    async with scratch_database("sqlite", tmp_path) as url, Database(url) as db:
        await db.upgrade("0003_chat", migrations=Migrations.installed())
        assert (await dump(url))["alembic_version"] == ["0003_chat"]
        await db.upgrade()
        assert await dump(url) == expected
