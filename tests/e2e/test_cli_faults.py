"""The ``rabbitry`` commands of the outbox and the event store, run as an operator runs them,
with the inputs and outages an operator meets: arguments that are not UTF-8, bodies that are
not JSON a PHP consumer can read, dates at the ends of the calendar, a database that is down
or missing, a 10 MB body. Bad input is one line on stderr and exit 2; a failure is one line
and exit 1; never a traceback."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fixtures.outbox import seed_rows, set_created_at
from helpers import (
    DEAD_AMQP_URL,
    cli_environment,
    eventually_true,
    listed,
    message,
    plain_queue,
)
from rabbitry.config import Settings
from rabbitry.messaging.publisher import Route
from rabbitry.messaging.topology import Queue, Topology
from rabbitry.outbox.filters import RequeueFilter
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import BrokerProbe, Endpoint
    from rabbitry.messaging import Declarer

RABBITRY = Path(sys.executable).with_name("rabbitry")
UNREACHABLE_DB = "postgresql://postgres@127.0.0.1:1/nothing"
Arg = str | bytes


async def rabbitry(
    settings: Settings, *args: Arg, stdin: bytes | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    def call() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [os.fsencode(RABBITRY), *(a if isinstance(a, bytes) else a.encode() for a in args)],
            env=cli_environment(settings, **env),
            cwd=settings.data_dir,
            input=stdin,
            capture_output=True,
            timeout=120,
            check=False,
        )

    return await asyncio.to_thread(call)


def one_error_line(done: subprocess.CompletedProcess[bytes]) -> str:
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1, done.stderr.decode("utf-8", "replace")
    assert lines[0].startswith("rabbitry: error: "), lines
    return lines[0]


def database_url(settings: Settings) -> str:
    return f"sqlite+aiosqlite:///{settings.data_dir / 'rabbitry.db'}"


# --- 8. the database is the fallback, not a precondition ----------------------------------------


async def test_publish_needs_no_database_while_the_broker_takes_the_message(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = await plain_queue(declarer, settings, "cli-faults")
    done = await rabbitry(
        settings,
        "publish",
        "-e",
        "",
        "-k",
        queue,
        "-t",
        "job",
        '{"a": 1}',
        RABBITRY_DATABASE_URL=UNREACHABLE_DB,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["status"] == "published"
    (got,) = await broker.get_all(queue)
    assert json.loads(got.body) == {"a": 1}


async def test_publish_with_the_broker_and_the_database_down_is_one_line_and_exit_1(
    settings: Settings,
) -> None:
    done = await rabbitry(
        settings,
        "publish",
        "-e",
        "",
        "-k",
        "q",
        "-t",
        "job",
        "{}",
        RABBITRY_AMQP_URL=DEAD_AMQP_URL,
        RABBITRY_DATABASE_URL=UNREACHABLE_DB,
    )
    assert done.returncode == 1
    assert "database" in one_error_line(done)
    assert done.stdout == b""


@pytest.mark.parametrize(
    "args",
    [["requeue"], ["events", "state", "E", "1"], ["events", "history", "E", "1"]],
    ids=["requeue", "events-state", "events-history"],
)
async def test_a_missing_database_is_one_line_and_exit_1(
    settings: Settings, args: list[str]
) -> None:
    missing = f"postgresql://postgres@127.0.0.1:5432/rabbitry_missing_{uuid.uuid4().hex[:8]}"
    done = await rabbitry(settings, *args, RABBITRY_DATABASE_URL=missing)
    assert done.returncode == 1
    assert "does not exist" in one_error_line(done)


# --- 10. bad input: one line, exit 2 ----------------------------------------------------------

PUBLISH = ["publish", "-e", "", "-k", "q"]
BAD_INPUT: dict[str, tuple[list[Arg], str]] = {
    "type-not-utf8": ([*PUBLISH, "-t", b"job\xff", "{}"], "--type"),
    "tenant-not-utf8": ([*PUBLISH, "-t", "job", "--tenant", b"\xe9t\xe9", "{}"], "--tenant"),
    "header-not-utf8": ([*PUBLISH, "-t", "job", "-H", b"name=\xfe", "{}"], "--header"),
    "body-not-utf8": ([*PUBLISH, "-t", "job", b'{"a": "\xff"}'], "UTF-8"),
    "body-nan": ([*PUBLISH, "-t", "job", '{"price": NaN}'], "NaN"),
    "body-infinity": ([*PUBLISH, "-t", "job", '{"price": -Infinity}'], "Infinity"),
    "body-too-deep": ([*PUBLISH, "-t", "job", "[" * 5000 + "]" * 5000], "nested deeper"),
    "body-lone-surrogate": ([*PUBLISH, "-t", "job", '{"a": "\\ud800"}'], "surrogate"),
    "body-twice": ([*PUBLISH, "-t", "job", "--body-file", "-", "{}"], "not both"),
    "body-none": ([*PUBLISH, "-t", "job"], "--body-file"),
    "body-file-missing": ([*PUBLISH, "-t", "job", "--body-file", "/nonexistent/b.json"], "read"),
    "consume-queue-not-utf8": (["consume", b"q\xff"], "QUEUE"),
    "requeue-queue-not-utf8": (["requeue", b"q\xff"], "QUEUE"),
    "requeue-from-not-utf8": (["requeue", "", b"2024-01-01 00:00:0\xff"], "FROM"),
    "entity-not-utf8": (["events", "state", b"App\\\xffOrder", "1"], "ENTITY"),
    "id-with-underscore": (["events", "state", "E", "1_0"], "ID"),
    "id-arabic-indic": (["events", "history", "E", "\u0661"], "ID"),
    "id-fullwidth": (["events", "state", "E", "\uff17"], "ID"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
async def test_bad_input_is_one_line_and_exit_2_before_any_connection(
    settings: Settings, endpoint: Endpoint, case: str
) -> None:
    args, culprit = BAD_INPUT[case]
    await endpoint.open("silent")  # counts connections: bad input makes none
    done = await rabbitry(
        settings,
        *args,
        stdin=b"{}",
        RABBITRY_AMQP_URL=endpoint.url,
        RABBITRY_DATABASE_URL=UNREACHABLE_DB,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert culprit in one_error_line(done)
    assert done.stdout == b""
    assert endpoint.accepted == 0


@pytest.mark.parametrize("zone", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"])
async def test_dates_at_the_ends_of_the_calendar_mean_from_the_start_and_to_the_end(
    settings: Settings, zone: str
) -> None:
    db = Database(database_url(settings))
    try:
        await db.upgrade()
        await seed_rows(db, [(Route(f"{settings.namespace}.x", "k", "q"), message(), "down")])
    finally:
        await db.close()
    requeue = await rabbitry(
        settings, "requeue", "nothing-here", "0001-01-01 00:00:00", "9999-12-31 23:59:59", TZ=zone
    )
    assert requeue.returncode == 0, requeue.stderr.decode()
    assert b"0 published, 0 failed" in requeue.stdout
    for at in ("9999-12-31 23:59:59", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"):
        state = await rabbitry(settings, "events", "state", "E", "1", "--at", at, TZ=zone)
        assert state.returncode == 1  # a clean "no events", not an OverflowError
        assert "no events for E 1" in one_error_line(state)


# --- 11. bodies too large for a command line ----------------------------------------------------


def big_body() -> bytes:
    """10 MB of JSON, formatted as a PHP service might send it (spaces, escapes, non-ASCII)."""
    chunk = '{"n": %d, "text": "Zürich \\u00e9t\\u00e9 \\"quoted\\"", "pad": "%s"}'
    items = [chunk % (n, "x" * 900) for n in range(10_500)]
    return ('{"items": [\n  ' + ",\n  ".join(items) + "\n]}").encode("utf-8")


async def test_a_10_mb_body_goes_through_publish_the_outbox_and_requeue_byte_for_byte(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = await plain_queue(declarer, settings, "cli-faults")
    body = big_body()
    assert len(body) >= 10_000_000
    path = settings.data_dir / "body.json"
    path.write_bytes(body)
    direct = await rabbitry(
        settings, "publish", "-e", "", "-k", queue, "-t", "job", "--body-file", str(path)
    )
    assert direct.returncode == 0, direct.stderr.decode()
    assert json.loads(direct.stdout)["status"] == "published"
    # The broker down: stored in the outbox (from standard input), then requeued.
    stored = await rabbitry(
        settings,
        "publish",
        "-e",
        "",
        "-k",
        queue,
        "-t",
        "job",
        "--body-file",
        "-",
        stdin=body,
        RABBITRY_AMQP_URL=DEAD_AMQP_URL,
    )
    assert stored.returncode == 0, stored.stderr.decode()
    assert json.loads(stored.stdout)["status"] == "persisted"
    db = Database(database_url(settings))
    try:
        (row,) = await Outbox(db).rows(RequeueFilter())
        assert row.body.encode("utf-8") == body
    finally:
        await db.close()
    requeued = await rabbitry(settings, "requeue")
    assert requeued.returncode == 0, requeued.stderr.decode()
    assert b"1 published, 0 failed" in requeued.stdout
    got = await broker.get_all(queue)
    assert [m.body == body for m in got] == [True, True]
    assert got[1].properties.message_id == json.loads(stored.stdout)["id"]


# --- 12. messages that tell the truth ---------------------------------------------------------


async def test_requeue_with_a_window_says_when_the_queue_has_rows_outside_it(
    settings: Settings,
) -> None:
    db = Database(database_url(settings))
    try:
        await db.upgrade()
        route = Route(f"{settings.namespace}.x", "k", queue="shipping_registered_publisher")
        (row_id,) = await seed_rows(db, [(route, message(), "down")])
        await set_created_at(db, {row_id: dt.datetime(2024, 6, 30, 12, tzinfo=dt.UTC)})
    finally:
        await db.close()
    done = await rabbitry(
        settings,
        "requeue",
        "shipping_registered_publisher",
        "2024-07-01 00:00:00",
        "2024-07-01 23:59:59",
        "--utc",
    )
    assert done.returncode == 0
    note = done.stderr.decode()
    assert "not in the registry" not in note
    assert "no pending rows between FROM and TO, but 1 outside that window" in note


# --- consume: an early end is not a success ---------------------------------------------------


async def test_consume_exits_1_when_its_connection_closes_before_count(
    settings: Settings, declarer: Declarer
) -> None:
    queue = await plain_queue(declarer, settings, "cli-faults")
    reading = asyncio.create_task(rabbitry(settings, "consume", queue, "--count", "5"))

    async def consuming() -> bool:
        rows = await asyncio.to_thread(listed, "queues", "name", "consumers")
        return [queue, "1"] in rows

    await eventually_true(consuming, timeout=60, what="the CLI to consume")  # nothing there yet
    await declarer.delete(Topology.of(queues=[Queue(queue)]))  # the broker cancels the consumer
    done = await asyncio.wait_for(reading, timeout=60)
    assert done.returncode == 1
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("rabbitry: error: the connection to the broker closed after 0")
    assert "Traceback" not in done.stderr.decode()


# --- the broker client underneath logs one WARNING line per refused connect --------------------


async def test_refused_connects_of_the_broker_client_are_one_warning_line_each(
    settings: Settings,
) -> None:
    done = await rabbitry(settings, "dead-letters", "list", RABBITRY_AMQP_URL=DEAD_AMQP_URL)
    assert done.returncode == 1
    log = done.stderr.decode("utf-8", "replace")
    lines = log.strip().splitlines()
    assert lines[-1].startswith("rabbitry: error: "), log
    # aio-pika's own line for the refused connect, kept, as a warning; no ERROR, no traceback.
    assert any(" WARNING aiormq.connection: error when creating transport" in ln for ln in lines)
    assert " ERROR " not in log and "Traceback" not in log, log
