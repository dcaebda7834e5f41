"""The extras as the code knows them (rabbitry.extras) agree with pyproject.toml, and the library
path imports none of the system's packages (tests/e2e/test_install.py checks the same on real
installs; this is the quick check)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rabbitry import extras

ROOT = Path(__file__).resolve().parents[2]


def declared(extra: str) -> set[str]:
    """The distributions ``extra`` lists in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"][extra]}


def distributions_of(modules: frozenset[str]) -> set[str]:
    """The installed distributions that provide ``modules``."""
    by_module = packages_distributions()
    return {canonicalize_name(d) for m in modules for d in by_module.get(m, [])}


def test_the_system_modules_are_those_of_the_system_extra_and_what_they_need() -> None:
    # starlette comes with fastapi; each module named belongs to a listed package or to one
    # that a listed package brings (checked by the install test); each listed package is named.
    assert declared("system") <= distributions_of(extras.SYSTEM)
    assert distributions_of(extras.SYSTEM) <= declared("system") | {"starlette"}


def test_the_reload_modules_are_those_of_the_reload_extra() -> None:
    assert distributions_of(extras.RELOAD) == declared("reload")


def test_dev_installs_the_system_and_reload_too() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "rabbitry[system,reload]" in project["optional-dependencies"]["dev"]


def test_a_missing_module_is_told_to_the_extra_it_belongs_to() -> None:
    assert extras.extra_of(ModuleNotFoundError("x", name="sqlalchemy.ext.asyncio")) == "system"
    assert extras.extra_of(ModuleNotFoundError("x", name="watchfiles")) == "reload"
    assert extras.extra_of(ModuleNotFoundError("x", name="not_ours")) is None
    assert extras.hint("system") == "pip install 'rabbitry[system]'"
    assert extras.installed("system") and extras.installed("reload")  # the dev install


LOAD_THE_LIBRARY = """
import json, sys
import rabbitry, rabbitry.testing, rabbitry.messaging.loader
for name in rabbitry.__all__:
    getattr(rabbitry, name)
print(json.dumps(sorted({m.partition(".")[0] for m in sys.modules})))
"""


def test_the_public_api_and_the_test_broker_load_none_of_the_system() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_THE_LIBRARY], capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(done.stdout))
    assert loaded & (extras.SYSTEM | extras.RELOAD) == set()
    assert "aio_pika" in loaded and "pydantic" in loaded  # it did load the library
