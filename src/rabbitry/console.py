"""What every command shares: settings from the context, one-line errors, running coroutines."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from rabbitry.errors import ConfigError, RabbitryError

if TYPE_CHECKING:
    from rabbitry.config import Settings

T = TypeVar("T")

USAGE_ERROR = 2


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
    """Print a one-line error to stderr and exit (2 = bad usage or input)."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"rabbitry: error: {first}", file=sys.stderr)
    raise typer.Exit(code)


def text(value: str, what: str) -> str:
    """``value`` if it is valid UTF-8, else a one-line usage error (exit 2).

    An argument whose bytes are not UTF-8 reaches Python with lone surrogates standing for
    the bad bytes (PEP 383): it would fail later, when encoded, with a traceback.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value[:60].encode("utf-8", "backslashreplace").decode("utf-8")
        fail(f"{what} is not valid UTF-8: {shown}")
    return value


def settings(ctx: typer.Context) -> Settings:
    """The settings parsed once by the root command (``--config``), cached on the context."""
    # Imported here: pydantic-settings is a tenth of a second that `--help` does not need.
    from rabbitry.config import Settings, load_settings

    root = ctx.find_root()
    cached = root.obj.get("settings") if isinstance(root.obj, dict) else None
    if isinstance(cached, Settings):
        return cached
    config_file = root.obj.get("config_file") if isinstance(root.obj, dict) else None
    try:
        value = load_settings(config_file)
    except ConfigError as exc:
        fail(str(exc))
    if isinstance(root.obj, dict):
        root.obj["settings"] = value
    return value


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a RabbitryError becomes a one-line error with exit code 1."""
    try:
        return asyncio.run(coro)
    except RabbitryError as exc:
        fail(str(exc), code=1)
