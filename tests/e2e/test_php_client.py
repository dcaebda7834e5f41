"""The PHP companion (clients/php) passes its PHPUnit suite against the real broker,
PostgreSQL and Rabbitry's own command line.

The suite is PHP's to run (``phpunit`` in clients/php, on Debian's packages: ``scripts/services
php`` installs them); this test runs it with the environment it needs and fails with PHPUnit's
output when PHPUnit fails, so the README's test command (and CI) runs it too. Its tests go
through the Python side: ``rabbitry worker workflow`` storing PHP's change events, ``rabbitry
publish`` read by PHP, PHP's contingency rows sent once by ``rabbitry requeue``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import AMQP_URL, RABBITRY, delete_namespace

PHP_CLIENT = Path(__file__).resolve().parents[2] / "clients" / "php"
PHPUNIT_TIMEOUT = 1200  # seconds; the suite starts `rabbitry` about twenty times


@pytest.mark.timeout(PHPUNIT_TIMEOUT + 60)
async def test_the_php_companion_passes_its_phpunit_suite(namespace: str, tmp_path: Path) -> None:
    phpunit = shutil.which("phpunit")
    assert phpunit is not None, "phpunit is not installed: run scripts/services php"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITRY_")}
    env.update(
        RABBITRY_TEST_AMQP_URL=AMQP_URL,
        # Every PHP test's namespace starts with ours: whatever they leave is deleted below.
        RABBITRY_TEST_NAMESPACE_PREFIX=namespace,
        RABBITRY_TEST_POSTGRES_ADMIN="host=127.0.0.1;port=5432;dbname=postgres;user=postgres",
        RABBITRY_BIN=RABBITRY,
        TMPDIR=str(tmp_path),
    )
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [phpunit, "--colors=never"],
            cwd=PHP_CLIENT,
            env=env,
            capture_output=True,
            text=True,
            timeout=PHPUNIT_TIMEOUT,
        )
    finally:
        await delete_namespace(namespace)
    output = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, f"PHPUnit failed:\n{output}"
    ran = re.search(r"^OK \((\d+) tests?, (\d+) assertions?\)$", done.stdout, re.MULTILINE)
    assert ran is not None and int(ran.group(1)) >= 30, f"PHPUnit ran too few tests:\n{output}"
