"""``rabbitry run MODULE:APP``: a user's own workers, served until SIGTERM or Ctrl-C; with
``--reload``, started again whenever a Python file under the watched folders changes.

It needs the library alone (``pip install rabbitry``); ``--reload`` needs watchfiles
(``rabbitry[reload]``). What the app is, and how it is found: :mod:`rabbitry.messaging.loader`.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from rabbitry import extras
from rabbitry.console import fail, run

# How long a restarted process may drain (AmqpSettings.drain_timeout's default) before it is
# killed; what it had not acked goes back to its queue, nothing is lost either way.
STOP_GRACE = 35.0


def register(app: typer.Typer) -> None:
    app.command("run")(run_app)


def run_app(
    ctx: typer.Context,
    app: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:APP",
            help="A Worker (or a list of workers) in a module, e.g. shop.workers:worker.",
        ),
    ],
    app_dir: Annotated[
        Path,
        typer.Option(file_okay=False, help="Import MODULE from this folder first."),
    ] = Path("."),
    reload: Annotated[
        bool,
        typer.Option("--reload", help="Restart when a .py file changes (for development)."),
    ] = False,
    reload_dir: Annotated[
        list[Path] | None,
        typer.Option(file_okay=False, help="Watch this folder (repeat; default: --app-dir)."),
    ] = None,
) -> None:
    """Run your own workers until SIGTERM or Ctrl-C, then drain them (the library's serve).

    Example: rabbitry run shop.workers:worker --reload
    """
    from rabbitry.errors import Invalid
    from rabbitry.messaging.loader import load_services, parse_spec

    try:
        parse_spec(app)
    except Invalid as exc:
        fail(str(exc))
    if not app_dir.is_dir():
        fail(f"--app-dir {app_dir}: no such folder")
    if reload:
        if not extras.installed("reload"):
            fail(f"--reload needs watchfiles, which is not installed: {extras.hint('reload')}")
        raise typer.Exit(_reloading(_child_argv(ctx, app, app_dir), reload_dir or [app_dir]))
    try:
        services = load_services(app, app_dir)
    except Invalid as exc:
        fail(str(exc))
    from rabbitry.messaging.service import serve

    run(serve(*services))


def _child_argv(ctx: typer.Context, app: str, app_dir: Path) -> list[str]:
    """The command each restart runs: this one, without --reload, with the root's options."""
    root = ctx.find_root().obj if isinstance(ctx.find_root().obj, dict) else {}
    # -B: no bytecode written for the user's modules, so that an edit within the same second
    # that keeps a file's size cannot be served stale from its .pyc (mtime has 1 s resolution).
    argv = [sys.executable, "-B", "-m", "rabbitry"]
    if root.get("config_file") is not None:
        argv += ["--config", str(Path(root["config_file"]).resolve())]
    argv += ["-v"] * int(root.get("verbose", 0))
    return [*argv, "run", app, "--app-dir", str(app_dir.resolve())]


def _reloading(argv: list[str], folders: list[Path]) -> int:
    """Run ``argv``, and again after each change to a .py file in ``folders``, until SIGTERM
    or Ctrl-C; the last run's exit code."""
    from watchfiles import PythonFilter, watch

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # stops watch() below, which then stops the child

    # Without this, SIGTERM would end this process and leave the child running on its own.
    signal.signal(signal.SIGTERM, interrupt)
    child = subprocess.Popen(argv)
    try:
        for changes in watch(*folders, watch_filter=PythonFilter(), raise_interrupt=False):
            names = sorted({Path(path).name for _, path in changes})
            print(f"rabbitry run: {', '.join(names)} changed, restarting", file=sys.stderr)
            _stop(child)
            child = subprocess.Popen(argv)
    finally:
        _stop(child)
    return child.returncode


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)  # serve drains on SIGTERM
        try:
            child.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
