"""`rabbitry outbox list|show|delete` and `rabbitry dead-letters list|move`, run through Typer
as an operator would: output, JSON lines, exit codes."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from typer.testing import CliRunner, Result

from conftest import BrokerProbe
from fixtures.outbox import Topic, seed_rows, set_created_at
from helpers import AMQP_URL
from rabbitry.amqp.declarer import Declarer
from rabbitry.cli import database, deadletters
from rabbitry.config import Settings
from rabbitry.messaging import work_queue
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.topology import dlq_name
from rabbitry.outbox.commands import register
from rabbitry.storage import Database


def make_app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True)

    @app.callback()
    def root(
        ctx: typer.Context, config: Annotated[Path | None, typer.Option("--config")] = None
    ) -> None:
        ctx.obj = {"config_file": config}

    register(app)
    database.register(app)
    deadletters.register(app)
    return app


async def invoke(config: Path, *args: str) -> Result:
    argv = ["--config", str(config), *args]
    return await asyncio.to_thread(CliRunner().invoke, make_app(), argv)


def write_config(path: Path, db_url: str, namespace: str) -> Path:
    values = {"database_url": db_url, "namespace": namespace, "amqp_url": AMQP_URL}
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


async def test_outbox_list_filters_and_prints_json_lines_with_a_next_page_key(
    db: Database, topic: Topic, tmp_path: Path
) -> None:
    rows = [
        (topic.route("k", queue=q), Message(type="t", payload={"n": n}), "down")
        for n, q in enumerate(["orders", "orders", "orders", "invoices"])
    ]
    ids = await seed_rows(db, rows)
    start = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    await set_created_at(db, {i: start + dt.timedelta(hours=n) for n, i in enumerate(ids)})
    config = write_config(tmp_path / "rabbitry.yaml", db.url, topic.namespace)

    first = await invoke(config, "outbox", "list", "--queue", "orders", "--limit", "2", "--json")
    assert first.exit_code == 0, first.output
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    assert [r["id"] for r in lines] == [ids[2], ids[1]]
    assert {r["state"] for r in lines} == {"pending"} and lines[0]["last_error"] == "down"
    key = first.stderr.strip().rsplit(" ", 1)[-1]

    second = await invoke(
        config, "outbox", "list", "--queue", "orders", "--after", key, "--json", "--utc"
    )
    assert [json.loads(line)["id"] for line in second.stdout.splitlines()] == [ids[0]]
    dated = await invoke(
        config, "outbox", "list", "--utc", "--from", "2024-07-01 01:00:00", "--to",
        "2024-07-01 02:00:00", "--json",
    )  # fmt: skip
    assert [json.loads(line)["id"] for line in dated.stdout.splitlines()] == [ids[2], ids[1]]
    table = await invoke(config, "outbox", "list")
    assert "invoices" in table.stdout and "pending" in table.stdout


async def test_outbox_show_and_delete_report_what_they_did(
    db: Database, topic: Topic, tmp_path: Path
) -> None:
    (row_id,) = await seed_rows(db, [(topic.route("k"), Message("t", {"to": "<b>"}), "down")])
    config = write_config(tmp_path / "rabbitry.yaml", db.url, topic.namespace)

    shown = await invoke(config, "outbox", "show", str(row_id))
    assert shown.exit_code == 0 and json.loads(shown.stdout)["payload"] == {"to": "<b>"}
    deleted = await invoke(config, "outbox", "delete", str(row_id), "999999")
    assert deleted.exit_code == 1
    assert f"deleted #{row_id}" in deleted.stdout and "#999999" in deleted.stderr
    listed = await invoke(config, "outbox", "list", "--state", "deleted", "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [row_id]
    missing = await invoke(config, "outbox", "show", "999999")
    assert missing.exit_code == 1


async def test_outbox_list_refuses_bad_arguments_with_exit_2(
    db: Database, topic: Topic, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "rabbitry.yaml", db.url, topic.namespace)
    for args in (["--to", "2024-07-01 00:00:00"], ["--after", "nonsense"], ["--state", "odd"]):
        result = await invoke(config, "outbox", "list", *args)
        assert result.exit_code == 2, (args, result.output)


async def test_dead_letters_list_and_move_through_the_command_line(
    settings: Settings, declarer: Declarer, broker: BrokerProbe, tmp_path: Path
) -> None:
    queue = f"{settings.namespace}.orders"
    await declarer.declare(work_queue(queue, policy=settings.retry))
    for n in range(3):
        await broker.publish(
            "",
            dlq_name(queue),
            b'{"n": %d}' % n,
            message_id=f"m-{n}",
            headers={"rr_job": "t", "x-rabbitry-reason": "bad", "x-rabbitry-queue": queue},
        )
    config = write_config(
        tmp_path / "rabbitry.yaml", f"sqlite:///{tmp_path / 'r.db'}", settings.namespace
    )

    listed = await invoke(config, "dead-letters", "list", queue, "--json")
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["reason"] for line in listed.stdout.splitlines()] == ["bad"] * 3
    one = await invoke(config, "dead-letters", "move", dlq_name(queue), "m-1")
    assert one.exit_code == 0 and "moved   m-1" in one.stdout
    rest = await invoke(config, "dead-letters", "move", queue, "--all")
    assert rest.exit_code == 0 and "2 moved, 0 failed" in rest.stdout
    assert sorted(r.properties.message_id for r in await broker.get_all(queue)) == [
        "m-0",
        "m-1",
        "m-2",
    ]
    for bad in (["move", queue], ["move", queue, "--all", "m-0"], ["list", "no spaces"]):
        result = await invoke(config, "dead-letters", *bad)
        assert result.exit_code == 2, (bad, result.output)
