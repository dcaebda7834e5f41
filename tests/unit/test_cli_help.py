"""Help texts are not wrapped mid-sentence: each paragraph of every command's help is one line
in the source the terminal wraps (Typer would keep a docstring's line breaks), checked on the
help of every command, the parts' lazily loaded ones included, rendered at 80 columns."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from typer._click import Command

from rabbitry.cli.app import command
from rabbitry.cli.lazy import LazyCommand

WIDTH = 80


def commands() -> Iterator[tuple[list[str], Command]]:
    def walk(cmd: Any, path: list[str]) -> Iterator[tuple[list[str], Command]]:
        yield path, cmd
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub.load() if isinstance(sub, LazyCommand) else sub, [*path, name])

    yield from walk(command(), [])


ALL = list(commands())


def test_every_help_paragraph_is_one_line_for_the_terminal_to_wrap() -> None:
    broken = [
        (" ".join(path), paragraph[:60])
        for path, cmd in ALL
        for paragraph in (cmd.help or "").split("\n\n")
        if "\n" in paragraph and not paragraph.startswith("\b")
    ]
    assert broken == []
    assert len(ALL) > 20  # the parts' commands were walked too


@pytest.mark.parametrize("path", [path for path, _ in ALL], ids=lambda p: " ".join(p) or "root")
def test_help_at_80_columns_breaks_lines_only_where_they_are_full(
    path: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    command().main([*path, "--help"], prog_name="rabbitry", standalone_mode=False)
    lines = capsys.readouterr().out.splitlines()
    assert len(max(lines, key=len)) == WIDTH
    # The prose between "Usage:" and the first panel (╭): one space of margin per line.
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    prose = [line.rstrip() for line in lines[start:end]]
    for line, following in itertools.pairwise(prose):
        if not line.strip() or not following.strip() or following.startswith("  "):
            continue  # a paragraph's end, or an indented \b block (exit codes)
        next_word = following.split()[0]
        # Broken early: the next line's first word would have fitted on this one.
        assert len(line) + 1 + len(next_word) > WIDTH - 1, f"{line!r} / {following!r}"
