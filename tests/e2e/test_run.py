"""``rabbitry run MODULE:APP`` as a developer runs it: the docs' worker served from the command
line against the real broker, a bad name refused in one line, and ``--reload`` serving the new
code after an edit."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import BrokerProbe
from helpers import AMQP_URL, EXAMPLES, RABBITRY, Eventually, listed
from rabbitry import AmqpSettings, Message, Publisher, Route


@dataclass
class Running:
    """A process started by the test, with the lines it has printed so far."""

    process: asyncio.subprocess.Process
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    def printed(self, line: str) -> bool:
        return line in self.out


async def _collect(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    async for line in stream:
        into.append(line.decode().rstrip("\n"))


@asynccontextmanager
async def started(*args: str, env: dict[str, str]) -> AsyncIterator[Running]:
    """``rabbitry ARGS`` running; SIGTERM and its exit awaited when the block ends."""
    process = await asyncio.create_subprocess_exec(
        RABBITRY, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    running = Running(process)
    readers = asyncio.gather(
        _collect(process.stdout, running.out), _collect(process.stderr, running.err)
    )
    try:
        yield running
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=90)
        finally:
            if process.returncode is None:
                process.kill()
            await readers


async def publish(queue: str, *payloads: dict[str, object], type_: str) -> None:
    async with Publisher(AmqpSettings(url=AMQP_URL)) as publisher:
        for payload in payloads:
            message = Message(type=type_, payload=payload)
            assert (await publisher.publish(message, Route("", queue))).ok


def consumers(queue: str) -> int:
    # Only this test's row is read: a queue of someone else's on the shared broker may list
    # no count (a queue whose node is down).
    rows = [row for row in listed("queues", "name", "consumers") if row[0] == queue]
    return int(rows[0][1]) if rows else 0


async def test_run_serves_the_docs_worker_until_sigterm(
    namespace: str, broker: BrokerProbe, eventually: Eventually
) -> None:
    queue = f"{namespace}.emails"
    env = {**os.environ, "EMAILS_QUEUE": queue, "AMQP_URL": AMQP_URL}
    async with started("run", "worker:worker", "--app-dir", str(EXAMPLES), env=env) as worker:

        async def consuming() -> bool:
            return await asyncio.to_thread(consumers, queue) == 1

        await eventually(consuming, timeout=60, what="the worker consuming its queue")
        await publish(
            queue, {"to": "ana@example.com"}, {"to": "nobody"}, type_="App\\Jobs\\SendEmail"
        )

        async def dead_lettered() -> bool:
            return (await broker.counts(f"{queue}.dlq"))[0] == 1

        await eventually(dead_lettered, timeout=30, what="the bad address dead-lettered")

        async def sent() -> bool:
            return worker.printed("sending to ana@example.com")

        await eventually(sent, timeout=30, what="the good address handled")
        worker.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(worker.process.wait(), timeout=90) == 0, worker.err
    (dead,) = await broker.get_all(f"{queue}.dlq")
    assert json.loads(dead.body) == {"to": "nobody"}


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("worker", "'worker' is not MODULE:APP (e.g. shop.workers:worker)"),
        ("no_such_module_here:worker", "no module 'no_such_module_here' in "),
        ("worker:no_such_thing", "module 'worker' has no attribute 'no_such_thing'"),
        ("worker:QUEUE", "worker:QUEUE is a str, not a Worker"),
    ],
)
def test_a_name_that_leads_to_no_worker_is_one_line_and_exit_2(spec: str, says: str) -> None:
    done = subprocess.run(
        [RABBITRY, "run", spec, "--app-dir", str(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("rabbitry: error: ") and says in line, line
    assert done.stdout == ""


APP = """
import os

import rabbitry

QUEUE = os.environ["RUN_QUEUE"]
amqp = rabbitry.AmqpSettings(url=os.environ["AMQP_URL"])
policy = rabbitry.RetryPolicy()


async def handle(message: rabbitry.Message) -> None:
    print({version!r}, message.payload["n"], flush=True)


subscription = rabbitry.Subscription(QUEUE, handlers={{"tick": handle}})
topology = rabbitry.work_queue(QUEUE, policy=policy)
worker = rabbitry.Worker("ticks", [subscription], topology, amqp=amqp, retry=policy)
"""


async def test_reload_serves_the_edited_module_after_a_change(
    tmp_path: Path, namespace: str, broker: BrokerProbe, eventually: Eventually
) -> None:
    queue = f"{namespace}.ticks"
    (tmp_path / "ticks.py").write_text(APP.format(version="first"))
    env = {**os.environ, "RUN_QUEUE": queue, "AMQP_URL": AMQP_URL}
    args = ("run", "ticks:worker", "--app-dir", str(tmp_path), "--reload")
    async with started(*args, env=env) as running:

        async def consuming() -> bool:
            return await asyncio.to_thread(consumers, queue) == 1

        await eventually(consuming, timeout=60, what="the first worker consuming")
        await publish(queue, {"n": 1}, type_="tick")

        async def handled(line: str) -> None:
            async def check() -> bool:
                return running.printed(line)

            await eventually(check, timeout=60, what=f"{line!r} printed")

        await handled("first 1")
        (tmp_path / "ticks.py").write_text(APP.format(version="second"))

        async def restarted() -> bool:
            return any("ticks.py changed, restarting" in line for line in running.err)

        await eventually(restarted, timeout=60, what="the restart after the edit")
        await publish(queue, {"n": 2}, type_="tick")
        await handled("second 2")
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), timeout=90) == 0, running.err
    assert "first 2" not in running.out
    # The reloader stopped its child with it: nothing consumes the queue any more.
    assert await asyncio.to_thread(consumers, queue) == 0


def test_reload_without_watchfiles_says_what_to_install(tmp_path: Path) -> None:
    # watchfiles hidden from the command, as in an install without rabbitry[reload].
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['watchfiles'] = None  # import watchfiles: ModuleNotFoundError\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [RABBITRY, "run", "worker:worker", "--app-dir", str(EXAMPLES), "--reload"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "rabbitry: error: --reload needs watchfiles, which is not installed: "
        "pip install 'rabbitry[reload]'\n"
    )
