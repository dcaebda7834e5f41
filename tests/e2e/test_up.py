"""`rabbitry up` as a user runs it: one process, HTTP, metrics, workers, graceful stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import RABBITRY, delete_namespace, free_port, wait_until


@pytest.fixture
def system(tmp_path: Path, namespace: str) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": namespace,
        "RABBITRY_DATA_DIR": str(tmp_path / "var"),
        "RABBITRY_ADMIN_TOKEN": "test-admin-token-16",
    }
    with (tmp_path / "up.log").open("w") as log:  # the process writes to its own copy
        proc = subprocess.Popen(
            [RABBITRY, "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, what="/healthz")
        yield base, env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        asyncio.run(delete_namespace(namespace))
        print((tmp_path / "up.log").read_text()[-3000:])


def test_up_serves_health_and_metrics(system: tuple[str, dict[str, str]]) -> None:
    base, _ = system
    health = httpx.get(f"{base}/healthz").json()
    assert health["status"] == "ok"
    assert health["database"] == "ok"
    metrics = httpx.get(f"{base}/metrics").text
    for name in ("rabbitry_published", "rabbitry_consumed", "rabbitry_dead_lettered"):
        assert f"# HELP {name}" in metrics


def test_up_runs_the_workflow_worker_end_to_end(system: tuple[str, dict[str, str]]) -> None:
    base, env = system
    namespace = env["RABBITRY_NAMESPACE"]
    event = {"entity": "App\\Models\\Task", "id": 7, "user": 3, "data": {"title": "hello"}}
    out = subprocess.run(
        [
            RABBITRY,
            "publish",
            "-e",
            f"{namespace}.events",
            "-k",
            "insert",
            "-t",
            "insert",
            json.dumps(event),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    published = json.loads(out.stdout)
    assert published["status"] == "published"
    history = wait_until(
        lambda: (
            httpx.get(
                f"{base}/api/events/App%5CModels%5CTask/7",
                headers={"Authorization": "Bearer test-admin-token-16"},
            )
            .json()
            .get("events")
        ),
        what="the event in the store",
    )
    (stored,) = history
    assert {k: stored[k] for k in ("entity", "id", "version", "type", "user", "data")} == {
        **event,
        "version": 1,
        "type": "insert",
    }
    assert stored["message_id"] == published["id"]
    metrics = httpx.get(f"{base}/metrics").text
    assert f'rabbitry_consumed_total{{queue="{namespace}.event-sourcing.p0"}} 1.0' in metrics


def test_up_stops_cleanly_on_sigterm(tmp_path: Path, namespace: str) -> None:
    port = free_port()
    env = {**os.environ, "RABBITRY_NAMESPACE": namespace, "RABBITRY_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [RABBITRY, "up", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, output
        assert "generated admin token" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        asyncio.run(delete_namespace(namespace))
