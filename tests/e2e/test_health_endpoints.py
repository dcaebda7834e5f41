"""Health that tells the truth, process by process: ``rabbitry worker … --port`` answers
``/livez``, ``/readyz`` and ``/metrics``; a process whose broker is gone is live but not ready;
a crashed service ends the process with exit code 1 (never a process answering ``ok``)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path

import httpx
import pytest

from helpers import DEAD_AMQP_URL, RABBITRY, cli_environment, free_port, plain_queue, wait_until
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.events.topology import EventsLayout

EXIT_TIMEOUT = 60


class Process:
    """A ``rabbitry`` process the test started, its output in a file; stopped after the test."""

    def __init__(self, settings: Settings, log: Path, *args: str, **env: str) -> None:
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [RABBITRY, *args],
                env=cli_environment(settings, **env),
                cwd=settings.data_dir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text()

    async def exit_code(self) -> int:
        return await asyncio.to_thread(self.proc.wait, EXIT_TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[list[Process]]:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in started:
            process.stop()
            print(process.output()[-3000:])


async def answers(url: str) -> None:
    """Wait until ``url`` answers 200."""
    await asyncio.to_thread(
        wait_until, lambda: httpx.get(url).status_code == HTTPStatus.OK, what=url, timeout=60
    )


def start(
    processes: list[Process], settings: Settings, tmp_path: Path, *args: str, **env: str
) -> Process:
    process = Process(settings, tmp_path / f"p{len(processes)}.log", *args, **env)
    processes.append(process)
    return process


async def test_a_worker_on_a_port_is_live_then_ready_once_consuming_and_serves_metrics(
    settings: Settings, declarer: Declarer, processes: list[Process], tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = start(processes, settings, tmp_path, "worker", "workflow", "--port", str(port))
    await answers(f"{base}/livez")
    await answers(f"{base}/readyz")
    async with httpx.AsyncClient(base_url=base) as client:
        ready, live, metrics = [await client.get(p) for p in ("/readyz", "/livez", "/metrics")]
    assert ready.json() == {
        "status": "ready",
        "database": "ok",
        "services": {"workflow": "consuming"},
    }
    assert live.json() == {"status": "live", "services": ["workflow"]}
    assert "# HELP rabbitry_consumed" in metrics.text
    worker.proc.send_signal(signal.SIGTERM)
    assert await worker.exit_code() == 0, worker.output()
    assert "generated admin token" not in worker.output()  # a worker serves no admin routes


async def test_a_worker_whose_broker_is_gone_is_live_but_not_ready(
    settings: Settings, processes: list[Process], tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    start(
        processes,
        settings,
        tmp_path,
        "worker",
        "workflow",
        "--port",
        str(port),
        RABBITRY_AMQP_URL=DEAD_AMQP_URL,
    )
    await answers(f"{base}/livez")
    async with httpx.AsyncClient() as client:
        not_ready = await client.get(f"{base}/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {
        "status": "not ready",
        "database": "ok",
        "services": {"workflow": "connecting"},
    }


@pytest.mark.parametrize("port", [True, False], ids=["with-port", "without-port"])
async def test_a_crashed_worker_exits_1_instead_of_lingering(
    settings: Settings,
    declarer: Declarer,
    processes: list[Process],
    tmp_path: Path,
    port: bool,
) -> None:
    # The event-sourcing queue exists with other arguments: the worker's declaration fails
    # with a configuration error, which no reconnecting can mend.
    queue = EventsLayout(settings.namespace).event_sourcing_queue
    await plain_queue(declarer, settings, queue.removeprefix(f"{settings.namespace}."))
    args = ["worker", "workflow", *(["--port", str(free_port())] if port else [])]
    worker = start(processes, settings, tmp_path, *args)
    assert await worker.exit_code() == 1, worker.output()
    last = worker.output().strip().splitlines()[-1]
    assert last.startswith("rabbitry: error: service workflow crashed:"), worker.output()


async def test_up_that_cannot_declare_its_topology_exits_non_zero(
    settings: Settings, declarer: Declarer, processes: list[Process], tmp_path: Path
) -> None:
    queue = EventsLayout(settings.namespace).event_sourcing_queue
    await plain_queue(declarer, settings, queue.removeprefix(f"{settings.namespace}."))
    up = start(processes, settings, tmp_path, "up", "--port", str(free_port()))
    assert await up.exit_code() != 0, up.output()  # uvicorn's own code for a failed start
    assert "the broker has it declared differently" in up.output()
