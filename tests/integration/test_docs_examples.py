"""The Python examples of docs/outbox.md and docs/message-format.md, run as a reader would: each
page's blocks in order, as one script, in a directory of its own, against the test broker."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rabbitry.config import Settings

ROOT = Path(__file__).parents[2]


def page_script(name: str) -> str:
    text = (ROOT / "docs" / name).read_text(encoding="utf-8")
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


def run(script: str, cwd: Path, settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RABBITRY_NAMESPACE": settings.namespace,
        "RABBITRY_AMQP_URL": settings.amqp.url,
        "RABBITRY_DATA_DIR": str(cwd / "var"),
    }
    return subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.usefixtures("_broker_cleanup")
def test_the_outbox_page_stores_a_message_when_the_broker_is_switched_off(
    tmp_path: Path, settings: Settings
) -> None:
    done = run(page_script("outbox.md"), tmp_path, settings)
    assert done.returncode == 0, done.stderr
    status, *rows = done.stdout.splitlines()
    assert status.startswith("persisted rabbit_active is false"), status
    assert len(rows) == 1 and " shipping_registered_publisher " in rows[0], rows
    assert rows[0].endswith(" False")


@pytest.mark.usefixtures("_broker_cleanup")
def test_the_message_format_page_decodes_and_publishes_as_it_says(
    tmp_path: Path, settings: Settings
) -> None:
    done = run(page_script("message-format.md"), tmp_path, settings)
    assert done.returncode == 0, done.stderr
    # No pipeline exchange "amqp.default" on the test broker: refused, with the broker's words.
    assert "failed" in done.stdout.splitlines()[-1], done.stdout
    assert "amqp.default" in done.stdout.splitlines()[-1], done.stdout


@pytest.mark.usefixtures("_broker_cleanup")
def test_the_library_page_adds_and_removes_subscriptions_of_a_running_worker(
    tmp_path: Path, settings: Settings
) -> None:
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    part = text[text.index("## Subscriptions at run time") : text.index("## Typed payloads")]
    (script,) = re.findall(r"```python\n(.*?)```", part, flags=re.S)
    done = run(script, tmp_path, settings)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["invoicing globex"]
