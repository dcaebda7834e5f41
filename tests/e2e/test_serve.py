"""`rabbitry serve NAME` and `rabbitry worker NAME`: one part's process at a time, built from
the registry of parts."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import httpx

from helpers import RABBITRY, free_port, schema_validator, wait_until
from rabbitry.app import registry


def test_serve_events_answers_its_api_health_and_metrics_and_runs_no_worker(
    tmp_path: Path, namespace: str
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": namespace,
        "RABBITRY_DATA_DIR": str(tmp_path / "var"),
        "RABBITRY_ADMIN_TOKEN": "test-admin-token-16",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [RABBITRY, "serve", "events", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, what="/healthz")
        assert "rabbitry_published" in httpx.get(f"{base}/metrics").text
        assert httpx.get(f"{base}/api/events/App%5COrder/1").status_code == 401
        admin = {"Authorization": "Bearer test-admin-token-16"}
        missing = httpx.get(f"{base}/api/events/App%5COrder/1", headers=admin)
        assert missing.status_code == 404
        assert missing.json() == {"error": "no events for App\\Order 1"}
        # The broker side of the API, next to the HTTP side, on every HTTP process.
        assert httpx.get(f"{base}/openapi.json").status_code == 200
        described = httpx.get(f"{base}/asyncapi.json").json()
        assert list(schema_validator("asyncapi-3.0.0.json").iter_errors(described)) == []
        assert "servers" not in described  # it answers anyone: no broker hosts
        queues = {c["address"] for c in described["channels"].values()}
        assert f"{namespace}.event-sourcing.p0" in queues
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
    output = log_path.read_text()
    assert code == 0, output
    assert "with workers: none" in output


def test_serve_and_worker_refuse_unknown_names_with_exit_2() -> None:
    for args, known in (
        (["serve", "nope"], "events"),
        (["worker", "workflow", "nope"], "relay"),
    ):
        done = subprocess.run([RABBITRY, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "'nope'" in line and known in line


def test_every_part_entry_names_unique_services_and_servers() -> None:
    names = [name for part in registry.PARTS for name in part.services]
    assert len(names) == len(set(names)) == len(registry.services())
    assert {"workflow", "relay"} <= set(names)
    assert "events" in registry.servers()
    assert len(registry.all_routers()) >= 1


def test_an_empty_or_short_admin_token_is_refused_at_start_with_exit_2(tmp_path: Path) -> None:
    for token in ("", "short-token"):
        env = {**os.environ, "RABBITRY_DATA_DIR": str(tmp_path), "RABBITRY_ADMIN_TOKEN": token}
        done = subprocess.run(
            [RABBITRY, "serve", "backoffice", "--port", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert "RABBITRY_ADMIN_TOKEN must be at least 16 characters" in line
        assert token not in line or not token
