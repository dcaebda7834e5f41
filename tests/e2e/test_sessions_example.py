"""The example of docs/sessions.md runs against `rabbitry up` and prints what the page says."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from pathlib import Path

import httpx

from helpers import RABBITRY, delete_namespace, free_port, run_example, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_the_sessions_example_removes_a_user_and_their_session_stops_working(
    tmp_path: Path,
) -> None:
    namespace = "t" + uuid.uuid4().hex[:10]
    port = free_port()
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": namespace,
        "RABBITRY_DATA_DIR": str(tmp_path / "var"),
    }
    # As the page says: no token given, so `rabbitry up` generates and keeps one, and the
    # example finds it, and the server at the URL it is given.
    for name in (
        "RABBITRY_ADMIN_TOKEN",
        "RABBITRY_SESSION_URL",
        "RABBITRY_REDIS_URL",
        "RABBITRY_MONGODB_URL",
    ):
        env.pop(name, None)
    with (tmp_path / "up.log").open("w") as log:  # the process writes to its own copy
        proc = subprocess.Popen(
            [RABBITRY, "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200)
        lines = run_example("sessions.py", env, f"http://127.0.0.1:{port}")
        assert lines[0].startswith("user ") and lines[0].endswith(" created in acme")
        assert lines[1:] == [
            "sessions/me: 200 ann",
            "DELETE user: 202 published",
            "sessions/me: 401 - the session went with its user",
        ]
        page = (ROOT / "docs" / "sessions.md").read_text()
        for line in lines[1:]:
            assert line in page
        # Run again: the tenant made by the first run is no obstacle.
        assert run_example("sessions.py", env, f"http://127.0.0.1:{port}")[1:] == lines[1:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        asyncio.run(delete_namespace(namespace))
