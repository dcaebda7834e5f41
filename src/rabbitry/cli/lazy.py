"""Sub-commands loaded when they run: ``rabbitry --help`` lists every part's commands from the
registry's one-line summaries, and only the command a user runs imports its part.

Importing every part up front costs FastAPI, SQLAlchemy and the broker client (1.3 s of
imports measured with ``python -X importtime``) before even ``--help`` could answer. pip lists
its commands the same way (``pip._internal.commands.commands_dict``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import typer
from typer import _click as click
from typer.core import TyperCommand, TyperGroup

Register = Callable[[typer.Typer], None]


class LazyCommand(TyperCommand):
    """Stands in for the command ``name`` that ``register`` adds, until it is invoked (or its
    own ``--help`` is asked): then the real command parses the arguments and runs."""

    def __init__(self, name: str, summary: str, register: Callable[[], Register], group: bool):
        super().__init__(name, help=summary)
        self.group = group
        self._register = register

    def load(self) -> click.Command:
        """The real command: ``register`` applied to a fresh Typer, as the root would."""
        scratch = typer.Typer()
        self._register()(scratch)
        found = typer.main.get_group(scratch).commands.get(self.name or "")
        if found is None:
            raise RuntimeError(f"{self.name!r} is not among the commands its register adds")
        return unwrap_help(found)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # The group hands the stand-in its arguments here; the real command takes over, and
        # runs with the context it makes (the group invokes ``context.command``).
        return self.load().make_context(info_name, args, parent=parent, **extra)


def unwrap_help(command: click.Command) -> click.Command:
    """Join the lines of each paragraph of ``command``'s help (and its sub-commands'), so that
    the terminal wraps them at its own width: Typer keeps a docstring's line breaks after the
    first paragraph, and at 80 columns every source line then ends mid-sentence. A paragraph
    that starts with ``\\b`` (a table, a list of exit codes) keeps its lines."""
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(
            p if p.startswith("\b") else " ".join(p.split("\n")) for p in paragraphs
        )
    for sub in getattr(command, "commands", {}).values():
        if not isinstance(sub, LazyCommand):
            unwrap_help(sub)
    return command


def add_lazy(group: TyperGroup, commands: Iterable[LazyCommand]) -> None:
    """Add stand-ins to ``group``, plain commands listed before groups, as Typer lists them."""
    for command in commands:
        group.add_command(command)
    ordered = sorted(group.commands.items(), key=lambda item: _is_group(item[1]))
    group.commands = dict(ordered)


def _is_group(command: click.Command) -> bool:
    return command.group if isinstance(command, LazyCommand) else isinstance(command, TyperGroup)
