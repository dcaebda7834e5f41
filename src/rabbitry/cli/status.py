"""``rabbitry status``: the system at a glance (Rich), ``--json`` for scripts, ``--watch`` to
refresh. Exit 1 when something needs attention, 0 otherwise (for cron and CI).

The readings and the report live in :mod:`rabbitry.app.probe` and :mod:`rabbitry.app.status`;
this module only parses, renders and picks the exit code. Imports stay inside the command, so
``rabbitry --help`` loads none of it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rabbitry.console import run, settings

if TYPE_CHECKING:
    from rich.console import RenderableType

ATTENTION = 1


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (one line per refresh).")
    ] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="Refresh until Ctrl-C instead of printing once.")
    ] = False,
    interval: Annotated[
        float,
        typer.Option(min=0.5, max=3600, help="Seconds between refreshes with --watch."),
    ] = 2.0,
) -> None:
    """Broker nodes, queues (depth, consumers, dead letters), the outbox, tenants without a
    DISPATCH consumer. Exit code 1 when something needs attention, 0 when all is well.

    Example: rabbitry status --json
    """
    import asyncio
    import datetime as dt

    from rich.console import Console
    from rich.live import Live

    from rabbitry.app.probe import read_status
    from rabbitry.app.status import report

    config = settings(ctx)
    console = Console()

    async def once() -> dict[str, Any]:
        return report(await read_status(config), dt.datetime.now(dt.UTC))

    if not watch:
        document = run(once())
        _show(console, document, as_json)
        raise typer.Exit(0 if document["ok"] else ATTENTION)

    async def forever(live: Live | None) -> None:
        while True:
            document = await once()
            last[0] = document
            if live is None:
                _show(console, document, as_json)
            else:
                live.update(_view(document))
            await asyncio.sleep(interval)

    last: list[dict[str, Any]] = [{"ok": True}]
    try:
        if as_json:
            run(forever(None))
        else:
            with Live(console=console, auto_refresh=False) as live:
                run(forever(live))
    except KeyboardInterrupt:
        pass
    raise typer.Exit(0 if last[0]["ok"] else ATTENTION)


def _show(console: Any, document: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(document), flush=True)
    else:
        console.print(_view(document))


def _view(document: dict[str, Any]) -> RenderableType:
    """Panels: what needs attention, the broker's nodes, the queues, the outbox and tenants."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    if document["attention"]:
        headline = Panel(
            "\n".join(f"• {line}" for line in document["attention"]),
            title="needs attention",
            border_style="red",
        )
    else:
        headline = Panel("all well", title="status", border_style="green")

    nodes = Table(title="broker nodes", expand=True)
    nodes.add_column("node")
    nodes.add_column("reachable")
    for node in document["nodes"]:
        nodes.add_row(node["where"], "yes" if node["reachable"] else f"no: {node['error']}")

    queues = Table(title="queues", expand=True)
    queues.add_column("queue")
    for column in ("ready", "consumers", "dead letters"):
        queues.add_column(column, justify="right")
    for queue in document["queues"]:
        queues.add_row(
            queue["name"],
            _figure(queue["messages"]),
            _figure(queue["consumers"]),
            _figure(queue["dead_letters"]),
        )

    outbox = document["outbox"]
    lines = [f"outbox pending: {outbox['pending']}"]
    if outbox["oldest_pending"] is not None:
        lines.append(f"oldest pending: {outbox['oldest_pending']}")
    for queue, count in outbox["pending_by_queue"].items():
        lines.append(f"  {queue}: {count}")
    if document["tenants_without_consumer"]:
        lines.append("tenants without DISPATCH: " + ", ".join(document["tenants_without_consumer"]))
    if document["invalid_tenants"]:
        lines.append("invalid tenant rows: " + ", ".join(map(repr, document["invalid_tenants"])))
    return Group(headline, nodes, queues, Panel("\n".join(lines), title="outbox and tenants"))


def _figure(value: int | None) -> str:
    return "missing" if value is None else str(value)
