"""The ``rabbitry`` console script, run as a user runs it: help, ``topology declare``,
``publish``, ``consume``, and how it refuses bad input (exit 2, one line on stderr).

Every run gets its own namespace and data directory through the environment, and runs in a
temporary directory, so no ``rabbitry.yaml`` nor RABBITRY_* variable of the developer leaks in.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from helpers import DEAD_AMQP_URL, RABBITRY, cli_environment, plain_queue
from rabbitry.amqp.declarer import Declarer
from rabbitry.app.registry import system_topology
from rabbitry.chat.topology import ChatLayout
from rabbitry.cli.app import command
from rabbitry.cli.lazy import LazyCommand
from rabbitry.config import Settings
from rabbitry.events.topology import EventsLayout
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.sessions.topology import TenantsLayout

if TYPE_CHECKING:
    from conftest import BrokerProbe, Endpoint


def command_paths() -> Iterator[list[str]]:
    """Every command and sub-command of the app, as argument lists (the root is []); a part's
    command is loaded to walk its own sub-commands."""

    def walk(command: Any, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            yield from walk(sub.load() if isinstance(sub, LazyCommand) else sub, [*path, name])

    yield from walk(command(), [])


def run_cli(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RABBITRY, *args],
        env=cli_environment(settings, **env),
        cwd=settings.data_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def rabbitry(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, settings, *args, **env)


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stderr.strip().splitlines()


# --- help ------------------------------------------------------------------------------------


async def test_help_of_every_command_exits_0(settings: Settings) -> None:
    paths = list(command_paths())
    # One process per command, a few side by side: the script's start-up dominates.
    slots = asyncio.Semaphore(os.cpu_count() or 2)

    async def show_help(path: list[str]) -> subprocess.CompletedProcess[str]:
        async with slots:
            return await rabbitry(settings, *path, "--help")

    runs = await asyncio.gather(*(show_help(path) for path in paths))
    broken = {
        " ".join(path) or "rabbitry": done.stderr.strip()[-300:]
        for path, done in zip(paths, runs, strict=True)
        if done.returncode != 0 or "Usage: rabbitry" not in done.stdout or done.stderr
    }
    assert broken == {}


def test_the_core_commands_are_there() -> None:
    paths = {" ".join(p) for p in command_paths()}
    assert {"publish", "consume", "run", "topology declare", "status"} <= paths


# --- topology declare ------------------------------------------------------------------------


async def test_topology_declare_creates_the_namespaced_objects_and_is_idempotent(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    first = await rabbitry(settings, "topology", "declare", "--tenant", "acme")
    second = await rabbitry(settings, "topology", "declare", "--tenant", "acme")

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("declared ")
    expected = system_topology(settings, ["acme"])
    queues, exchanges = await broker.objects(f"{settings.namespace}.")
    assert set(queues) == {q.name for q in expected.queues}
    assert set(exchanges) == {e.name for e in expected.exchanges}
    layout = EventsLayout(settings.namespace)
    for name in (
        layout.module_queue("workflow"),
        layout.event_sourcing_queue,
        TenantsLayout(settings.namespace).tenant_queue("acme"),
        ChatLayout(settings.namespace).history_queue,
        f"{layout.module_queue('workflow')}.dlq",
    ):
        assert name in queues
        assert await declarer.queue_size(name) == 0

    # The bindings work: the workflow module hears every routing key of the modules exchange.
    async with Publisher(settings.amqp) as publisher:
        result = await publisher.publish(
            Message(type="invoice.created", payload={"id": 1}),
            Route(layout.modules_exchange, "billing.invoice.created"),
        )
    assert result.status is PublishStatus.PUBLISHED
    assert await declarer.queue_size(layout.module_queue("workflow")) == 1


async def test_topology_declare_without_a_broker_fails_with_exit_1_and_a_reason(
    settings: Settings,
) -> None:
    done = await rabbitry(settings, "topology", "declare", RABBITRY_AMQP_URL=DEAD_AMQP_URL)
    assert done.returncode == 1
    assert error_lines(done)[-1].startswith("rabbitry: error: ")
    assert done.stdout == ""


# --- publish ---------------------------------------------------------------------------------


async def test_publish_prints_the_id_and_published_and_the_message_is_in_the_queue(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = await plain_queue(declarer, settings)

    done = await rabbitry(
        settings,
        "publish",
        "-e",
        "",
        "-k",
        queue,
        "-t",
        "job",
        "--tenant",
        "acme",
        "-H",
        "attempts=1",
        "-H",
        "attempts=2",
        '{"a":1}',
    )

    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    printed = json.loads(line)
    assert printed["status"] == "published"
    assert printed.get("error") is None
    uuid.UUID(printed["id"])
    (got,) = await broker.get_all(queue)
    assert got.headers["rr_id"] == printed["id"]
    assert got.properties.message_id == printed["id"]
    assert got.headers["rr_job"] == "job"
    assert got.headers["x-tenant"] == "acme"
    assert json.loads(got.headers["rr_headers"]) == {"attempts": ["1", "2"]}
    assert (got.tags["rr_delay"], got.tags["rr_priority"], got.tags["rr_headers"]) == (
        "l",
        "l",
        "x",
    )
    assert json.loads(got.body) == {"a": 1}


async def test_publish_that_the_broker_cannot_take_is_persisted_in_the_outbox(
    settings: Settings,
) -> None:
    done = await rabbitry(
        settings, "publish", "-e", "", "-k", "q", "-t", "job", "{}", RABBITRY_AMQP_URL=DEAD_AMQP_URL
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout.splitlines()[-1])
    assert printed["status"] == "persisted"
    assert "cannot connect" in printed["error"]


# --- consume ---------------------------------------------------------------------------------


async def test_consume_prints_one_json_line_per_message_and_stops_after_count(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = await plain_queue(declarer, settings)
    first = Message(
        type="invoice.created",
        payload={"id": 7, "total": "9.90"},
        headers={"source": ("billing",)},
        tenant="acme",
    )
    second = Message(type="user.deleted", payload={"id": 8})
    async with Publisher(settings.amqp) as publisher:
        results = await publisher.publish_many(
            [(first, Route("", queue)), (second, Route("", queue))]
        )
    assert {r.status for r in results} == {PublishStatus.PUBLISHED}

    one = await rabbitry(settings, "consume", queue, "--count", "1")
    assert one.returncode == 0, one.stderr
    (line,) = one.stdout.splitlines()
    record = json.loads(line)
    assert {k: record[k] for k in ("type", "id", "payload", "headers")} == {
        "type": "invoice.created",
        "id": first.id,
        "payload": {"id": 7, "total": "9.90"},
        "headers": {"source": ["billing"]},
    }
    assert record["tenant"] == "acme"
    # --count 1 took one: the other is still there, ready, not held unacked.
    assert await broker.counts(queue) == (1, 0)

    rest = await rabbitry(settings, "consume", queue, "--timeout", "1")
    assert rest.returncode == 0, rest.stderr
    assert [json.loads(x)["id"] for x in rest.stdout.splitlines()] == [second.id]
    assert await broker.counts(queue) == (0, 0)


async def test_consume_of_a_missing_queue_fails_with_exit_1_naming_it(
    settings: Settings, declarer: Declarer
) -> None:
    done = await rabbitry(settings, "consume", f"{settings.namespace}.nope", "--count", "1")
    assert done.returncode == 1
    (line,) = error_lines(done)
    assert line.startswith("rabbitry: error: ") and f"{settings.namespace}.nope" in line


# --- bad input -------------------------------------------------------------------------------

BAD_INPUT = {
    "body-not-json": (["publish", "-e", "", "-k", "q", "-t", "job", "{not json"], "JSON"),
    "bad-exchange": (["publish", "-e", "a b", "-k", "q", "-t", "job", "{}"], "a b"),
    "empty-type": (["publish", "-e", "", "-k", "q", "-t", " ", "{}"], "--type"),
    "missing-type": (["publish", "-e", "", "-k", "q", "{}"], "--type"),
    "bad-queue": (["consume", "a b"], "a b"),
    "count-zero": (["consume", "q", "--count", "0"], "--count"),
    "unknown-command": (["frobnicate"], "frobnicate"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_exits_2_with_a_single_line_error_and_touches_no_broker(
    settings: Settings, endpoint: Endpoint, case: str
) -> None:
    args, culprit = BAD_INPUT[case]
    # A broker address that counts connections: input is refused before any is made.
    await endpoint.open("silent")
    done = await rabbitry(settings, *args, RABBITRY_AMQP_URL=endpoint.url)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = error_lines(done)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("rabbitry: error: ") and culprit in lines[0]
    assert endpoint.accepted == 0
