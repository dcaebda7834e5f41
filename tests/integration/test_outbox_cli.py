"""The outbox's commands, run through Typer as a user would (exit codes, output)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from typer.testing import CliRunner, Result

from fixtures.outbox import Topic, pending_ids, seed_rows, set_created_at
from helpers import AMQP_URL, drain_ids, message
from rabbitry.cli import database, deadletters
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.commands import register
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database


def make_app() -> typer.Typer:
    """A stand-in for `rabbitry` with only the outbox's commands."""
    app = typer.Typer(no_args_is_help=True)

    @app.callback()
    def root(
        ctx: typer.Context,
        config: Annotated[Path | None, typer.Option("--config", "-c")] = None,
    ) -> None:
        ctx.obj = {"config_file": config}

    register(app)
    database.register(app)
    deadletters.register(app)
    return app


def write_config(path: Path, db_url: str, namespace: str, **extra: Any) -> Path:
    values = {"database_url": db_url, "namespace": namespace, "amqp_url": AMQP_URL, **extra}
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


async def invoke(config: Path | None, *args: str) -> Result:
    argv = (["--config", str(config)] if config else []) + list(args)
    # The commands call asyncio.run(), so they run in a thread of their own.
    return await asyncio.to_thread(CliRunner().invoke, make_app(), argv)


async def test_db_upgrade_creates_the_sqlite_file(tmp_path: Path, outbox_ns: str) -> None:
    url = f"sqlite:///{tmp_path / 'var' / 'rabbitry.db'}"
    config = write_config(tmp_path / "rabbitry.yaml", url, outbox_ns)
    result = await invoke(config, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "migrated" in result.stdout
    assert (tmp_path / "var" / "rabbitry.db").is_file()
    listed = await invoke(config, "queues", "list")
    assert listed.exit_code == 0, listed.output
    assert "empty" in listed.stdout


async def test_queues_sync_and_list(db: Database, tmp_path: Path, outbox_ns: str) -> None:
    queues = [
        {
            "name": "shipping_registered_publisher",
            "description": "Envío registrado",
            "allow_manual_insertion": True,
            "classname": "Shipment",
            "exchange": f"{outbox_ns}.modules",
            "routing_key": "shipping.registered",
        },
        {"name": "notify_vkm_publisher", "description": "Notificar a VKM"},
    ]
    config = write_config(tmp_path / "rabbitry.yaml", db.url, outbox_ns, queues=queues)
    result = await invoke(config, "queues", "sync")
    assert result.exit_code == 0, result.output
    assert "2 created" in result.stdout
    await seed_rows(db, [(Route("x", "k", queue="notify_vkm_publisher"), message("a"), "down")])
    listed = await invoke(config, "queues", "list")
    assert listed.exit_code == 0, listed.output
    for text in ("shipping_registered_publisher", "Envío registrado", "Notificar a VKM"):
        assert text in listed.stdout
    config = write_config(tmp_path / "rabbitry.yaml", db.url, outbox_ns, queues=queues[:1])
    again = await invoke(config, "queues", "sync")
    assert "1 deactivated" in again.stdout and "notify_vkm_publisher" in again.stdout
    active = await invoke(config, "queues", "list", "--active")
    assert "notify_vkm_publisher" not in active.stdout


async def test_queues_sync_needs_a_config_file() -> None:
    result = await invoke(None, "queues", "sync")
    assert result.exit_code == 2
    assert "rabbitry.yaml" in result.stderr


async def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, outbox_ns: str) -> None:
    config = write_config(tmp_path / "rabbitry.yaml", "sqlite:///unused.db", outbox_ns)
    for args, reason in [
        (("q", "2024-07-01"), "YYYY-MM-DD HH:MM:SS"),
        (("q", "", "2024-07-01 00:00:00"), "TO needs FROM"),
        (("", "2024-07-02 00:00:00", "2024-07-01 00:00:00"), "before FROM"),
    ]:
        result = await invoke(config, "requeue", *args)
        assert result.exit_code == 2, (args, result.output)
        assert reason in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "unused.db").exists()


async def test_requeue_publishes_and_exits_0(db: Database, topic: Topic, tmp_path: Path) -> None:
    import datetime as dt

    sent = [message(str(n)) for n in range(3)]
    old = message("old")
    ids = await seed_rows(db, [(topic.route(queue="q1"), m, "down") for m in [*sent, old]])
    await set_created_at(db, {ids[-1]: dt.datetime(2024, 6, 1, tzinfo=dt.UTC)})
    config = write_config(tmp_path / "rabbitry.yaml", db.url, topic.namespace)
    result = await invoke(config, "requeue", "q1", "2024-07-01 00:00:00", "--utc", "-v")
    assert result.exit_code == 0, result.output
    assert "requeue: 3 published, 0 failed" in result.stdout
    for m in sent:
        assert m.id in result.stdout  # -v lists each row
    assert old.id not in result.stdout
    assert sorted(await drain_ids(topic.queue, idle=0.5)) == sorted(m.id for m in sent)
    assert await pending_ids(db) == {old.id}


async def test_requeue_exits_1_when_a_row_fails(db: Database, topic: Topic, tmp_path: Path) -> None:
    await seed_rows(db, [(topic.route(), message("ok"), "down")])
    await seed_rows(db, [(Route(f"{topic.namespace}.missing", "k"), message("bad"), "down")])
    config = write_config(tmp_path / "rabbitry.yaml", db.url, topic.namespace)
    result = await invoke(config, "requeue")
    assert result.exit_code == 1, result.output
    assert "1 published, 1 failed" in result.stdout
    rows = await Outbox(db).rows(RequeueFilter())
    assert [r.attempts for r in rows] == [1]


async def test_requeue_refuses_when_rabbit_is_inactive(
    db: Database, tmp_path: Path, outbox_ns: str
) -> None:
    await seed_rows(db, [(Route("x", "k"), message("a"), "down")])
    config = write_config(tmp_path / "rabbitry.yaml", db.url, outbox_ns, rabbit_active=False)
    result = await invoke(config, "requeue")
    assert result.exit_code == 1
    assert "rabbit_active is false" in result.stderr
    (row,) = await Outbox(db).rows(RequeueFilter())
    assert row.attempts == 0
