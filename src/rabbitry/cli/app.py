"""The root ``rabbitry`` command: global options, then one sub-command per part."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer._click.exceptions import ClickException
from typer.core import TyperGroup

from rabbitry import extras
from rabbitry.app.registry import PARTS, Commands
from rabbitry.cli import logs, messaging, run, status, system
from rabbitry.cli.lazy import LazyCommand, Register, add_lazy, unwrap_help
from rabbitry.console import USAGE_ERROR

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
    logs.configure(level)
    ctx.obj = {"config_file": config, "verbose": verbose}


messaging.register(app)
run.register(app)
system.register(app)
status.register(app)

# The CLI's own command groups that need the broker client or SQLAlchemy load when they run too.
_OWN = [
    LazyCommand(
        "dead-letters",
        "Dead-letter queues: list what died and why, move messages back to their queue.",
        lambda: importlib.import_module("rabbitry.cli.deadletters").register,
        group=True,
    ),
    LazyCommand(
        "db",
        "The SQL database.",
        lambda: importlib.import_module("rabbitry.cli.database").register,
        group=True,
    ),
]


def _lazy(commands: Commands) -> list[LazyCommand]:
    def register() -> Register:
        return commands.register.load()

    return [
        LazyCommand(name, summary, register, group=is_group)
        for is_group, table in ((False, commands.commands), (True, commands.groups))
        for name, summary in table.items()
    ]


def command() -> TyperGroup:
    """The root command: the CLI's own commands, and every part's, loaded when they run."""
    group = typer.main.get_group(app)
    parts = [c for part in PARTS if part.commands for c in _lazy(part.commands)]
    add_lazy(group, [*_OWN, *parts])
    unwrap_help(group)
    return group


def main() -> None:
    """Run the CLI; usage errors become one line on stderr and exit code 2, and so does a
    command that needs an extra this install lacks (``pip install rabbitry`` is the library
    alone: ``rabbitry up`` needs ``rabbitry[system]``)."""
    try:
        code = command().main(standalone_mode=False)
    except ModuleNotFoundError as exc:
        extra = extras.extra_of(exc)
        if extra is None:
            raise
        print(
            f"rabbitry: error: this command needs rabbitry[{extra}], which is not installed "
            f"(no module {exc.name!r}): {extras.hint(extra)}",
            file=sys.stderr,
        )
        sys.exit(USAGE_ERROR)
    except ClickException as exc:
        message = exc.format_message().strip()
        if message:  # with no arguments at all, the help has been printed already
            print(f"rabbitry: error: {message.splitlines()[0]}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
