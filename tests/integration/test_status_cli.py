"""``rabbitry status`` against the real broker and database, in a namespace of its own: a
healthy system exits 0; a dead letter, a pending outbox row, a tenant without a DISPATCH
consumer, an unreachable broker node each exit 1 and show in ``--json``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import yaml
from sqlalchemy import insert
from typer.testing import CliRunner, Result

from fixtures.outbox import make_settings, seed_rows
from helpers import AMQP_URL, RABBITRY, cli_environment, free_port, message
from rabbitry.app.operations import declare_system
from rabbitry.cli.app import app
from rabbitry.config import Settings
from rabbitry.messaging.publisher import Route
from rabbitry.sessions.models import Tenant
from rabbitry.sessions.tenants import Tenants
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow


@pytest.fixture
async def system(db: Database, outbox_ns: str) -> AsyncIterator[Settings]:
    """Settings of a declared system with no tenant, nothing pending, no dead letter."""
    settings = make_settings(db, outbox_ns)
    await declare_system(settings, [])
    yield settings


def write_config(path: Path, settings: Settings, **extra: Any) -> Path:
    values = {
        "namespace": settings.namespace,
        "amqp_url": settings.amqp.url,
        "database_url": settings.database_url.get_secret_value() if settings.database_url else None,
        "connect_timeout": 2.0,
        **extra,
    }
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


async def status(config: Path, *args: str) -> tuple[Result, dict[str, Any]]:
    # The command calls asyncio.run(), so it runs in a thread of its own.
    argv = ["--config", str(config), "status", "--json", *args]
    result = await asyncio.to_thread(CliRunner().invoke, app, argv)
    assert result.exit_code in (0, 1), result.output
    return result, json.loads(result.stdout)


async def ignore(_: aio_pika.abc.AbstractIncomingMessage) -> None:
    """A consumer that stands in for DISPATCH: the queue stays empty, only its presence counts."""


def queue(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [q for q in document["queues"] if q["name"] == name]
    assert len(found) == 1, document["queues"]
    return found[0]


async def test_a_healthy_system_exits_0(system: Settings, tmp_path: Path) -> None:
    result, document = await status(write_config(tmp_path / "rabbitry.yaml", system))
    assert result.exit_code == 0, result.output
    assert document["ok"] is True
    assert document["attention"] == []
    assert document["nodes"] == [{"where": "127.0.0.1:5672", "reachable": True, "error": None}]
    workflow = queue(document, f"{system.namespace}.module.workflow")
    assert (workflow["messages"], workflow["consumers"], workflow["dead_letters"]) == (0, 0, 0)
    assert document["outbox"]["pending"] == 0
    assert document["outbox"]["oldest_pending"] is None


async def test_a_dead_letter_needs_attention(system: Settings, tmp_path: Path) -> None:
    dlq = f"{system.namespace}.module.workflow.dlq"
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(aio_pika.Message(b"{}"), routing_key=dlq)
    result, document = await status(write_config(tmp_path / "rabbitry.yaml", system))
    assert result.exit_code == 1, result.output
    assert queue(document, f"{system.namespace}.module.workflow")["dead_letters"] == 1
    assert document["attention"] == [f"1 dead letter(s) in {dlq}"]


async def test_a_pending_outbox_row_needs_attention(
    system: Settings, db: Database, tmp_path: Path
) -> None:
    route = Route(f"{system.namespace}.modules", "shipping.registered", queue="shipping")
    await seed_rows(db, [(route, message("a"), "broker down")])
    result, document = await status(write_config(tmp_path / "rabbitry.yaml", system))
    assert result.exit_code == 1, result.output
    assert document["outbox"]["pending"] == 1
    assert document["outbox"]["pending_by_queue"] == {"shipping": 1}
    assert document["outbox"]["oldest_pending"] is not None
    assert document["attention"] == ["1 message(s) pending in the outbox"]


async def test_a_tenant_without_a_dispatch_consumer_needs_attention_until_one_comes(
    system: Settings, db: Database, tmp_path: Path
) -> None:
    await Tenants(db).create("acme")
    await declare_system(system, ["acme"])
    config = write_config(tmp_path / "rabbitry.yaml", system)
    result, document = await status(config)
    assert result.exit_code == 1, result.output
    tenant_queue = f"{system.namespace}.tenant.acme.removals"
    assert document["tenants_without_consumer"] == ["acme"]
    assert queue(document, tenant_queue)["consumers"] == 0
    assert document["attention"] == [f"tenant acme has no DISPATCH consumer on {tenant_queue}"]

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.get_queue(tenant_queue)
        tag = await declared.consume(ignore)
        result, document = await status(config)
        await declared.cancel(tag)
    assert result.exit_code == 0, result.output
    assert document["tenants_without_consumer"] == []
    assert queue(document, tenant_queue)["consumers"] == 1


async def test_a_tenant_row_with_an_invalid_name_is_reported_not_fatal(
    system: Settings, db: Database, tmp_path: Path
) -> None:
    async with db.session() as session:
        await session.execute(insert(Tenant).values(name="-x", created_at=utcnow()))
    result, document = await status(write_config(tmp_path / "rabbitry.yaml", system))
    assert result.exit_code == 1, result.output
    assert document["invalid_tenants"] == ["-x"]
    assert document["database_error"] is None


async def test_an_unreachable_broker_node_needs_attention(system: Settings, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    url = AMQP_URL.replace("127.0.0.1:5672", f"127.0.0.1:5672,{dead}")
    assert url != AMQP_URL
    result, document = await status(write_config(tmp_path / "rabbitry.yaml", system, amqp_url=url))
    assert result.exit_code == 1, result.output
    assert [(n["where"], n["reachable"]) for n in document["nodes"]] == [
        ("127.0.0.1:5672", True),
        (dead, False),
    ]
    assert len(document["attention"]) == 1
    assert document["attention"][0].startswith(f"broker node {dead} unreachable")
    # The reachable node still answers for the queues.
    assert queue(document, f"{system.namespace}.module.workflow")["messages"] == 0


async def test_no_reachable_node_is_reported_not_a_crash(system: Settings, tmp_path: Path) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    result, document = await status(write_config(tmp_path / "rabbitry.yaml", system, amqp_url=url))
    assert result.exit_code == 1, result.output
    assert document["nodes"][0]["reachable"] is False
    assert document["broker_error"] == "no node of the broker URL is reachable"
    assert "guest:guest" not in result.stdout


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [RABBITRY, "status", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"RABBITRY_DATA_DIR": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("rabbitry: error:")
    assert len(done.stderr.strip().splitlines()) == 1


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def test_watch_refreshes_until_interrupted(system: Settings, db: Database) -> None:
    env = cli_environment(system, RABBITRY_DATABASE_URL=db.url)
    process = await asyncio.create_subprocess_exec(
        RABBITRY,
        "status",
        "--json",
        "--watch",
        "--interval",
        "0.5",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Ctrl-C's default action, as in a terminal: a suite started in the background (nohup,
        # `&`) hands its children SIGINT ignored, and Python then installs no handler for it.
        preexec_fn=_default_sigint,
    )
    try:
        assert process.stdout is not None
        first = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        second = json.loads(await asyncio.wait_for(process.stdout.readline(), 60))
        assert first["ok"] is True and second["ok"] is True
        process.send_signal(signal.SIGINT)
        # Read on until it exits: a watch blocked writing to a full pipe cannot see the signal.
        await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_terminal_view_shows_what_needs_attention(
    system: Settings, db: Database, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "rabbitry.yaml", system)
    argv = ["--config", str(config), "status"]
    healthy = await asyncio.to_thread(CliRunner().invoke, app, argv)
    assert healthy.exit_code == 0, healthy.output
    assert "all well" in healthy.stdout
    await seed_rows(db, [(Route("x", "k", queue="shipping"), message("a"), "broker down")])
    result = await asyncio.to_thread(CliRunner().invoke, app, argv)
    assert result.exit_code == 1, result.output
    for text in ("needs attention", "1 message(s) pending", "127.0.0.1:5672", "oldest pending"):
        assert text in result.stdout
    assert f"{system.namespace}.module.workflow" in result.stdout
