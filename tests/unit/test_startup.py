"""The entry points load what they run: ``rabbitry --help``, ``rabbitry publish --help`` and
``import rabbitry`` import no web framework, ORM, template engine or part of the system (the
cost that made ``--help`` take 1.9 s). What each loads is checked, not how long it takes:
``bench/startup.py`` prints the times."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# The console script's code, then the modules it left loaded, as one JSON line on stderr.
PROBE = """
import json, sys
from rabbitry.cli.app import main
sys.argv = ["rabbitry", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""

IMPORT_PROBE = "import json, sys, rabbitry; print(json.dumps(sorted(sys.modules)), file=sys.stderr)"

HEAVY = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "jinja2",
    "aio_pika",
    "aiormq",
    "redis",
    "pymongo",
    "httpx",
    "prometheus_client",
}
PARTS = {
    "rabbitry.outbox",
    "rabbitry.events",
    "rabbitry.sessions",
    "rabbitry.chat",
    "rabbitry.backoffice",
    "rabbitry.storage",
    "rabbitry.web",
    "rabbitry.app.http",
    "rabbitry.app.server",
    "rabbitry.messaging",
    "rabbitry.amqp",
}


def loaded(code: str, *args: str) -> tuple[set[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    *_, modules = done.stderr.strip().splitlines()
    return set(json.loads(modules)), done.stdout


def heavy_and_parts(modules: set[str]) -> list[str]:
    return sorted(
        m
        for m in modules
        if m.split(".")[0] in HEAVY or any(m == p or m.startswith(p + ".") for p in PARTS)
    )


@pytest.mark.parametrize("args", [["--help"], ["publish", "--help"]])
def test_help_loads_no_web_orm_template_or_part_module(args: list[str]) -> None:
    modules, shown = loaded(PROBE, *args)
    assert "Usage: rabbitry" in shown  # the help itself was printed
    assert heavy_and_parts(modules) == []


def test_the_root_help_still_lists_every_command_with_its_help_text() -> None:
    _, shown = loaded(PROBE, "--help")
    for name, line in [
        ("publish", "Publish one message in Rabbitry's format"),
        ("requeue", "Publish pending outbox rows again"),
        ("dead-letters", "Dead-letter queues: list what died and why"),
        ("events", "Change events: an entity's history"),
    ]:
        assert any(name in row and line in row for row in shown.splitlines()), name


def test_a_command_loads_its_part_when_it_runs() -> None:
    # `events history` with no argument fails on usage, after its part was loaded to parse.
    modules, _ = loaded(PROBE, "events", "history")
    assert "rabbitry.events.commands" in modules


def test_importing_rabbitry_loads_only_the_error_tree() -> None:
    modules, _ = loaded(IMPORT_PROBE)
    ours = sorted(m for m in modules if m.split(".")[0] == "rabbitry")
    # The error tree, the version, and the few lines that load the rest on first use.
    assert ours == ["rabbitry", "rabbitry._version", "rabbitry.errors", "rabbitry.exports"]
    assert not {"pydantic", "pydantic_settings", "typer"} & {m.split(".")[0] for m in modules}
