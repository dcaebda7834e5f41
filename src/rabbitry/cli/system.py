"""``rabbitry up``, ``rabbitry serve PART`` and ``rabbitry worker NAME``."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from rabbitry.cli.common import run, settings
from rabbitry.system import run_server, run_workers

HOST = "127.0.0.1"


class WorkerName(StrEnum):
    WORKFLOW = "workflow"
    RELAY = "relay"


class ServePart(StrEnum):
    ALL = "all"


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("worker")(worker)


def up(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = HOST,
) -> None:
    """Start the whole system in one process: HTTP APIs, /healthz, /metrics and every worker.

    Migrates the database first (SQLite in ./var/ unless RABBITRY_DATABASE_URL is set) and
    declares the broker topology. Stop with Ctrl-C or SIGTERM: in-flight messages finish first.
    """
    run(run_server(settings(ctx), host=host, port=port, workers=None))


def worker(
    ctx: typer.Context,
    name: Annotated[list[WorkerName], typer.Argument(help="Which worker(s) to run.")],
) -> None:
    """Run one or more workers without HTTP (scale them out by starting more processes)."""
    run(run_workers(settings(ctx), [n.value for n in name]))
