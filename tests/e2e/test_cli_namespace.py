"""The quickstart under any namespace (RABBITRY_NAMESPACE set, as on a shared broker), and a
refusal told apart from an outage, through the ``rabbitry`` console script: a publish the
broker refuses is stored, flagged, says so and exits 3; ``rabbitry outbox list`` flags it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import pytest

from helpers import DEAD_AMQP_URL, RABBITRY, cli_environment
from rabbitry.config import Settings

QUICKSTART_BODY = (
    '{"entity": "App\\\\Models\\\\Task", "id": 1, "user": 7, "data": {"title": "Write docs"}}'
)


async def rabbitry(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [RABBITRY, *args],
        env=cli_environment(settings, **env),
        cwd=settings.data_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def outcome(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    printed: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return printed


@pytest.mark.usefixtures("_broker_cleanup")
async def test_the_quickstart_publish_reaches_the_namespaces_exchange(settings: Settings) -> None:
    declared = await rabbitry(settings, "topology", "declare")
    assert declared.returncode == 0, declared.stderr
    exchange = f"{settings.namespace}.events"
    done = await rabbitry(
        settings, "publish", "-e", exchange, "-k", "insert", "-t", "insert", QUICKSTART_BODY
    )
    assert done.returncode == 0, done.stderr
    assert outcome(done) | {"id": None} == {
        "id": None,
        "status": "published",
        "error": None,
        "refused": False,
    }


@pytest.mark.usefixtures("_broker_cleanup")
async def test_a_publish_to_another_namespaces_exchange_is_refused_flagged_and_exits_3(
    settings: Settings,
) -> None:
    declared = await rabbitry(settings, "topology", "declare")
    assert declared.returncode == 0, declared.stderr
    # The quickstart's exchange as written for another namespace (a random one: on a shared
    # broker the default namespace's own exchange may well exist).
    other = f"elsewhere{uuid.uuid4().hex[:8]}.events"
    done = await rabbitry(
        settings, "publish", "-e", other, "-k", "insert", "-t", "insert", QUICKSTART_BODY
    )
    assert done.returncode == 3, done.stdout + done.stderr
    printed = outcome(done)
    assert (printed["status"], printed["refused"]) == ("persisted", True)
    assert "NOT_FOUND" in str(printed["error"])
    # One line on stderr saying what happened, and which exchange this namespace has.
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("rabbitry:")]
    assert "NOT_FOUND" in line and "stored in the outbox as refused" in line
    assert line.endswith(f"did you mean {settings.namespace}.events?")

    listed = await rabbitry(settings, "outbox", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["message_id"], row["state"], row["refused"]) == (printed["id"], "pending", True)
    assert row["failure"] == "refused" and row["next_attempt_at"] is not None
    table = await rabbitry(settings, "outbox", "list")
    assert "pending (refused)" in table.stdout


async def test_a_publish_no_queue_is_bound_for_is_refused_too(settings: Settings) -> None:
    # The default exchange routes by queue name: no such queue, nowhere to go (mandatory).
    queue = f"{settings.namespace}.nobody"
    done = await rabbitry(settings, "publish", "-e", "", "-k", queue, "-t", "x", "{}")
    assert done.returncode == 3, done.stdout + done.stderr
    assert outcome(done)["refused"] is True
    assert str(outcome(done)["error"]).startswith("unroutable")
    assert "did you mean" not in done.stderr


async def test_a_publish_the_broker_is_not_there_for_is_stored_not_refused(
    settings: Settings,
) -> None:
    done = await rabbitry(
        settings, "publish", "-e", "", "-k", "q", "-t", "job", "{}", RABBITRY_AMQP_URL=DEAD_AMQP_URL
    )
    assert done.returncode == 0, done.stderr
    assert (outcome(done)["status"], outcome(done)["refused"]) == ("persisted", False)
    assert "as refused" not in done.stderr
