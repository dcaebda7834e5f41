"""``RABBITRY_ENV=production``: a process refuses to start on settings that only suit one
machine (SQLite, a generated admin token, each process's own session cache), in one line that
names what to set, before it opens anything."""

from __future__ import annotations

import subprocess

import pytest

from helpers import RABBITRY, cli_environment, free_port
from rabbitry.config import Settings


@pytest.mark.parametrize(
    "command",
    [["up"], ["serve", "chat"], ["worker", "dispatch"]],
    ids=["up", "serve", "worker"],
)
def test_a_production_process_without_postgresql_token_or_redis_refuses_to_start(
    settings: Settings, command: list[str]
) -> None:
    port = ["--port", str(free_port())] if command[0] != "worker" else []
    env = cli_environment(
        settings, RABBITRY_ENV="production", RABBITRY_ADMIN_TOKEN="t0ken-42-not-a-real-secret"
    )
    done = subprocess.run(
        [RABBITRY, *command, *port], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("rabbitry: error: RABBITRY_ENV=production: set ")
    assert "RABBITRY_DATABASE_URL" in line and "RABBITRY_REDIS_URL" in line
    assert "RABBITRY_ADMIN_TOKEN" not in line  # it is set, and never printed
    assert "t0ken-42-not-a-real-secret" not in done.stderr + done.stdout
    assert not settings.data_dir.exists() or not any(settings.data_dir.iterdir())
