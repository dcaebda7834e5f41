"""The examples the docs point at run, and print what the docs say they print."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_library_example_publishes_consumes_and_dead_letters(namespace: str) -> None:
    env = {**os.environ, "RABBITRY_NAMESPACE": namespace}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "library.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = out.stdout.splitlines()
    assert sum(line.endswith(": published") for line in lines) == 3
    assert lines[-1] == "sent to ['ana@example.com', 'bo@example.com']; dead-lettered: 1"
