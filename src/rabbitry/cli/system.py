"""``rabbitry up``, ``rabbitry serve NAME`` and ``rabbitry worker NAME…``: processes built from
the registry of parts. The server is imported by the command that runs it (not for ``--help``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer

from rabbitry.app import registry
from rabbitry.console import fail, run, settings
from rabbitry.errors import ConfigError

HOST = "127.0.0.1"

_WORKERS = ", ".join(registry.services())
_SERVERS = ", ".join(registry.server_names())

PortOption = Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")]
HostOption = Annotated[str, typer.Option(help="Interface to listen on.")]


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("serve")(serve)
    app.command("worker")(worker)


def up(ctx: typer.Context, port: PortOption = 8000, host: HostOption = HOST) -> None:
    """Start the whole system in one process: HTTP APIs, /healthz, /metrics and every worker.

    Migrates the database first (SQLite in ./var/ unless RABBITRY_DATABASE_URL is set) and
    declares the broker topology. Stop with Ctrl-C or SIGTERM: in-flight messages finish first.
    """
    from rabbitry.app.server import run_up

    config = settings(ctx)
    _traced("rabbitry", lambda: run_up(config, host=host, port=port))


def serve(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help=f"One of: {_SERVERS}.")],
    port: PortOption = 8000,
    host: HostOption = HOST,
) -> None:
    """Serve one part's HTTP API alone (with /healthz and /metrics), to scale it out.

    Example: rabbitry serve events --port 8001
    """
    if name not in registry.server_names():
        fail(f"unknown server {name!r}: choose from {_SERVERS}")
    from rabbitry.app.server import run_part_server

    config = settings(ctx)
    _traced(f"rabbitry-{name}", lambda: run_part_server(config, name, host=host, port=port))


def worker(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(metavar="NAME...", help=f"Any of: {_WORKERS}.")],
    port: Annotated[
        int | None,
        typer.Option(
            min=1, max=65535, help="Serve /livez, /readyz, /healthz and /metrics on this port."
        ),
    ] = None,
    host: HostOption = HOST,
) -> None:
    """Run one or more workers (scale them out by starting more processes).

    Without --port there is no HTTP; with it, the health endpoints and metrics. A worker that
    crashes stops the process with exit code 1.

    Example: rabbitry worker workflow relay --port 9101
    """
    known = registry.services()
    for name in names:
        if name not in known:
            fail(f"unknown worker {name!r}: choose from {_WORKERS}")
    from rabbitry.app.server import run_workers

    config = settings(ctx)
    service = f"rabbitry-{'-'.join(names)}"
    _traced(service, lambda: run_workers(config, names, host=host, port=port))


def _traced(service: str, process: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``process`` with trace export set up as the OTEL_* variables ask (see
    docs/observability.md), flushing the spans still buffered when it ends."""
    from rabbitry.app.telemetry import configure_tracing

    try:
        shutdown = configure_tracing(os.environ, service)
    except ConfigError as exc:
        fail(str(exc))
    try:
        run(process())
    finally:
        if shutdown is not None:
            shutdown()
