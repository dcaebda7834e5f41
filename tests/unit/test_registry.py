"""The registry of parts: every reference of every entry loads to what it names, the CLI lists
each part's commands as they are, and the hooks a served part brings do what ``rabbitry up``
and ``rabbitry serve NAME`` need (so that the server has no case for any part)."""

from __future__ import annotations

import contextlib
import inspect
import io
import stat
from pathlib import Path
from typing import Any

import pytest
import typer.main
from fastapi import APIRouter
from typer._click.exceptions import UsageError

from rabbitry.app import registry
from rabbitry.app.registry import Ref
from rabbitry.cli.app import command
from rabbitry.cli.lazy import LazyCommand
from rabbitry.config import Settings
from rabbitry.web import Process, with_admin_token


def test_every_reference_of_every_part_loads() -> None:
    for part in registry.PARTS:
        for spec in part.services.values():
            assert inspect.isclass(spec.build.load()), spec.build
        for refs in part.servers.values():
            for ref in refs:
                assert isinstance(ref.load(), APIRouter), ref
        hooks: list[Ref[Any] | None] = [
            part.topology,
            part.tenant_topology,
            part.lifespan,
            part.prepare,
        ]
        if part.commands is not None:
            hooks.append(part.commands.register)
        for hook in hooks:
            assert hook is None or callable(hook.load()), hook


def render(group: Any, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = group.main([*args, "--help"], prog_name="rabbitry", standalone_mode=False)
    assert code == 0
    return out.getvalue()


def test_the_listing_of_commands_is_what_the_loaded_commands_show(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    lazy = command()
    eager = command()
    eager.commands = {
        name: sub.load() if isinstance(sub, LazyCommand) else sub
        for name, sub in eager.commands.items()
    }
    assert render(lazy) == render(eager)
    for name, sub in lazy.commands.items():
        if isinstance(sub, LazyCommand):
            assert render(lazy, name) == render(eager, name), name


def test_every_command_a_part_registers_is_listed_and_nothing_else() -> None:
    for part in registry.PARTS:
        if part.commands is None:
            continue
        scratch = typer.Typer()
        part.commands.register.load()(scratch)
        real = typer.main.get_group(scratch).commands
        assert set(real) == {*part.commands.commands, *part.commands.groups}, part.name
        for name in part.commands.groups:
            assert isinstance(real[name], typer.core.TyperGroup), name


def test_a_lazy_command_runs_the_real_one() -> None:
    with pytest.raises(UsageError, match="entity"):
        command().main(["events", "history"], prog_name="rabbitry", standalone_mode=False)


def test_serving_chat_alone_generates_no_admin_token(capsys: pytest.CaptureFixture[str]) -> None:
    settings = registry.prepare(Settings(), Process("serve", "http://127.0.0.1:1"), "chat")
    assert settings.admin_token is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("server", ["events", "user", "session", "backoffice"])
def test_a_server_with_admin_routes_gets_a_token_told_once(
    server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fresh = Settings(data_dir=tmp_path)
    settings = registry.prepare(fresh, Process("serve", "http://127.0.0.1:1"), server)
    assert settings.admin_token is not None
    told = capsys.readouterr().err.splitlines()
    assert told == [
        f"rabbitry: generated admin token (kept in {tmp_path / 'admin-token'}; set "
        "RABBITRY_ADMIN_TOKEN to fix it): " + settings.admin_token.get_secret_value()
    ]
    assert settings.service_token is None and settings.session_url is None


def test_a_generated_admin_token_survives_a_restart_in_a_file_only_its_owner_reads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fresh = Settings(data_dir=tmp_path / "var")
    first = registry.prepare(fresh, Process("serve", "http://127.0.0.1:1"), "backoffice")
    kept = tmp_path / "var" / "admin-token"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    capsys.readouterr()
    again = registry.prepare(fresh, Process("up", "http://127.0.0.1:2"))
    assert again.admin_token == first.admin_token
    (told,) = capsys.readouterr().err.splitlines()
    assert told == f"rabbitry: admin token from {kept} (set RABBITRY_ADMIN_TOKEN to fix it)"
    assert first.admin_token is not None
    assert first.admin_token.get_secret_value() not in told  # printed once, when generated


def test_a_broken_token_file_is_replaced_and_an_unwritable_one_is_not_fatal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "admin-token").write_text("short\n")
    replaced = with_admin_token(Settings(data_dir=tmp_path))
    assert replaced.admin_token is not None
    token = replaced.admin_token.get_secret_value()
    assert (tmp_path / "admin-token").read_text() == token + "\n"
    blocked = tmp_path / "file"
    blocked.write_text("")  # data_dir under a file: cannot be created
    unkept = with_admin_token(Settings(data_dir=blocked / "var"))
    assert unkept.admin_token is not None and len(unkept.admin_token.get_secret_value()) >= 16
    assert "not kept: cannot write" in capsys.readouterr().err


def test_up_wires_dispatch_to_its_own_session_routes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = registry.prepare(Settings(data_dir=tmp_path), Process("up", "http://127.0.0.1:8123"))
    assert settings.session_url == "http://127.0.0.1:8123"
    assert settings.service_token is not None
    assert settings.admin_token is not None
    err = capsys.readouterr().err
    assert err.count("generated admin token") == 1  # once, though three parts want one
    assert settings.service_token.get_secret_value() not in err  # never printed


def test_up_keeps_what_is_configured() -> None:
    configured = Settings(
        admin_token="a" * 24, service_token="s" * 32, session_url="http://sessions.internal"
    )
    with contextlib.redirect_stderr(None):
        settings = registry.prepare(configured, Process("up", "http://127.0.0.1:8123"))
    assert settings == configured
