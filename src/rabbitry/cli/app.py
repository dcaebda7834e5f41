"""The root ``rabbitry`` command: global options, then one sub-command per part."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import ClickException

from rabbitry.app.registry import PARTS
from rabbitry.cli import database, deadletters, messaging, status, system

app = typer.Typer(
    name="rabbitry",
    help="Rabbitry: RoadRunner-compatible messaging on RabbitMQ, with a contingency outbox, "
    "event sourcing, session revocation and a scaled WebSocket chat.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            exists=True,
            dir_okay=False,
            help="rabbitry.yaml (default: ./rabbitry.yaml when present).",
        ),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")
    ] = 0,
) -> None:
    """Settings come from RABBITRY_* environment variables and rabbitry.yaml."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = {"config_file": config, "verbose": verbose}


messaging.register(app)
deadletters.register(app)
database.register(app)
system.register(app)
status.register(app)

for _part in PARTS:
    if _part.commands is not None:
        _part.commands(app)


def main() -> None:
    """Run the CLI; usage errors become one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except ClickException as exc:
        message = exc.format_message().strip()
        if message:  # with no arguments at all, the help has been printed already
            print(f"rabbitry: error: {message.splitlines()[0]}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
