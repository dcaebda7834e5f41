"""The examples the docs point at run, and print what the docs say they print."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from conftest import BrokerProbe
from helpers import AMQP_URL, Eventually, run_example
from rabbitry import Message, Publisher, Route

ROOT = Path(__file__).resolve().parents[2]


def test_library_example_publishes_consumes_and_dead_letters(namespace: str) -> None:
    env = {**os.environ, "RABBITRY_NAMESPACE": namespace}
    lines = run_example("library.py", env)
    assert sum(line.endswith(": published") for line in lines) == 3
    assert lines[-1] == "sent to ['ana@example.com', 'bo@example.com']; dead-lettered: 1"


async def test_the_fifteen_line_worker_handles_retries_and_dead_letters(
    namespace: str, broker: BrokerProbe, eventually: Eventually
) -> None:
    queue = f"{namespace}.emails"
    env = {**os.environ, "EMAILS_QUEUE": queue, "AMQP_URL": AMQP_URL}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "examples" / "worker.py"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def declared() -> bool:
            queues, _ = await broker.objects(queue)
            return f"{queue}.dlq" in queues and queue in queues

        await eventually(declared, what="the worker declaring its queues")
        async with Publisher() as publisher:
            for to in ("ana@example.com", "nobody"):
                message = Message(type="App\\Jobs\\SendEmail", payload={"to": to})
                assert (await publisher.publish(message, Route("", queue))).ok

        async def dead_lettered() -> bool:
            return (await broker.counts(f"{queue}.dlq"))[0] == 1

        await eventually(dead_lettered, what="the bad address in the dead-letter queue")
        (dead,) = await broker.get_all(f"{queue}.dlq")
        assert json.loads(dead.body) == {"to": "nobody"}
        assert dead.headers["x-rabbitry-reason"] == "not an address"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["sending to ana@example.com"]


def test_the_library_page_shows_the_worker_example_as_it_runs() -> None:
    page = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    code = (ROOT / "examples" / "worker.py").read_text(encoding="utf-8")
    assert f"```python\n{code}```" in page
