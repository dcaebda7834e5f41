"""What ``pip install rabbitry`` and ``pip install 'rabbitry[system]'`` pull in: a wheel of this
checkout installed into two fresh virtual environments, from a wheelhouse repacked from the test
environment (tests/wheelhouse.py: no network, no index), and what each can then run.

The library alone must not bring (nor import) the web framework, the ORM, the database drivers,
Redis or argon2; the system must not bring the development tools.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

import rabbitry
from helpers import AMQP_URL, EXAMPLES
from rabbitry import extras
from wheelhouse import PIP, wheelhouse

pytestmark = pytest.mark.slow

# The [system] extra's distributions and what they bring; none belongs in the library install.
SYSTEM_ONLY = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "greenlet",
    "alembic",
    "mako",
    "aiosqlite",
    "asyncpg",
    "redis",
    "jinja2",
    "argon2-cffi",
    "httpx",
    "pymongo",
    "watchfiles",
}
LIBRARY = {"rabbitry", "aio-pika", "aiormq", "pamqp", "pydantic", "pydantic-settings", "typer"}
DEV_TOOLS = {"pytest", "mypy", "ruff", "playwright", "import-linter", "hypothesis", "pika"}


def pip_env() -> dict[str, str]:
    """The environment without this machine's pip configuration (its find-links, indexes and
    constraints): the wheelhouse is the only source."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def fresh_venv(where: Path, requirement: str, house: Path) -> Path:
    """A new virtual environment at ``where`` with ``requirement`` installed from ``house``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    source = ["--find-links", str(house), requirement]
    subprocess.run(
        # This environment's pip installs into the new one (it has none of its own). No .pyc
        # compiled up front: only the modules the test imports are, when it imports them.
        [*PIP, "--python", str(python), "install", "-q", "--no-compile", "--no-index", *source],
        check=True,
        env=pip_env(),
        timeout=300,
    )
    return where


@pytest.fixture(scope="module")
def venvs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """``{"library": venv, "system": venv}``, installed side by side."""
    root = tmp_path_factory.mktemp("install")
    house = root / "wheelhouse"
    wheel = wheelhouse(house, ["system", "reload"])
    with ThreadPoolExecutor(2) as pool:
        library = pool.submit(fresh_venv, root / "library", str(wheel), house)
        system = pool.submit(fresh_venv, root / "system", f"{wheel}[system]", house)
        yield {"library": library.result(), "system": system.result()}


def installed(venv: Path) -> set[str]:
    script = "import importlib.metadata as m\nfor d in m.distributions(): print(d.metadata['Name'])"
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    return {canonicalize_name(name) for name in out.stdout.split()}


def run_in(
    venv: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``args[0]`` of the venv's bin/ run with the rest of ``args``."""
    command = [str(venv / "bin" / args[0]), *args[1:]]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_the_library_install_pulls_in_no_system_package_and_no_dev_tool(
    venvs: dict[str, Path],
) -> None:
    names = installed(venvs["library"])
    print("library install:", len(names), sorted(names))
    assert names & SYSTEM_ONLY == set()
    assert names & DEV_TOOLS == set()
    assert names >= LIBRARY


def test_the_system_install_has_the_system_and_no_dev_tool(venvs: dict[str, Path]) -> None:
    names = installed(venvs["system"])
    print("system install:", len(names), sorted(names))
    assert names >= LIBRARY | (SYSTEM_ONLY - {"watchfiles"})
    assert names & DEV_TOOLS == set()


# The library as a user's project uses it: every public name, the test broker, a worker run on
# it; then which of the system's modules that loaded (none may be importable, and none loaded).
USE_THE_LIBRARY = """
import asyncio, json, sys
import rabbitry
from rabbitry import Message, Publisher, Route, Worker, Subscription, Reject, work_queue
from rabbitry.testing import MemoryBroker

public = {name: getattr(rabbitry, name) for name in rabbitry.__all__}
handled = []

async def handle(message: Message) -> None:
    if message.payload["n"] < 0:
        raise Reject("negative")
    handled.append(message.payload["n"])

async def main() -> list[int]:
    topology = work_queue("app.numbers", policy=rabbitry.RetryPolicy())
    worker = Worker("numbers", [Subscription("app.numbers", handlers={"n": handle})], topology)
    broker = MemoryBroker()
    async with broker.running(worker):
        async with broker.publisher() as publisher:
            for n in (1, -1, 2):
                message = Message(type="n", payload={"n": n})
                await publisher.publish(message, Route("", "app.numbers"))
        await broker.drain()
    return [len(public), handled, broker.counts(rabbitry.dlq_name("app.numbers"))[0]]

loaded = sorted({m.partition(".")[0] for m in sys.modules} & set(sys.argv[1:]))
print(json.dumps([*asyncio.run(main()), loaded]))
"""


def test_the_library_runs_its_public_api_and_test_broker_without_the_system(
    venvs: dict[str, Path],
) -> None:
    done = run_in(venvs["library"], "python", "-c", USE_THE_LIBRARY, *sorted(extras.SYSTEM))
    assert done.returncode == 0, done.stderr
    count, handled, dead, loaded = json.loads(done.stdout)
    assert count == len(rabbitry.__all__)
    assert (handled, dead, loaded) == ([1, 2], 1, [])


def test_the_library_command_runs_what_it_can_and_names_the_extra_for_the_rest(
    venvs: dict[str, Path], namespace: str
) -> None:
    library = venvs["library"]
    helped = run_in(library, "rabbitry", "--help")
    assert helped.returncode == 0 and " run " in helped.stdout, helped.stderr
    # One command of the system (each process takes seconds in a fresh environment).
    done = run_in(library, "rabbitry", "up")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("rabbitry: error: this command needs rabbitry[system]"), line
    assert line.endswith(": pip install 'rabbitry[system]'"), line
    reload = run_in(
        library, "rabbitry", "run", "worker:worker", "--app-dir", str(EXAMPLES), "--reload"
    )
    assert (reload.returncode, reload.stderr) == (
        2,
        "rabbitry: error: --reload needs watchfiles, which is not installed: "
        "pip install 'rabbitry[reload]'\n",
    )
    # Publishing works with the library alone; with no outbox, a refused message fails and
    # says it was not stored (exit 1), rather than pretending it was kept.
    env = {**os.environ, "RABBITRY_NAMESPACE": namespace, "RABBITRY_AMQP_URL": AMQP_URL}
    body = '{"n": 1}'
    sent = run_in(
        library,
        "rabbitry",
        "publish",
        "-e",
        f"{namespace}.absent",
        "-k",
        "k",
        "-t",
        "n",
        body,
        env=env,
    )
    assert sent.returncode == 1, sent.stderr
    result = json.loads(sent.stdout)
    assert result["status"] == "failed"
    assert result["error"].endswith(
        "not stored: the outbox comes with the system (pip install 'rabbitry[system]')"
    )


def test_the_system_install_imports_the_system(venvs: dict[str, Path]) -> None:
    system = venvs["system"]
    imported = run_in(
        system, "python", "-c", "import rabbitry.app.server, rabbitry.backoffice.web; print('ok')"
    )
    assert imported.stdout == "ok\n", imported.stderr
