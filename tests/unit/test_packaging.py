"""The distribution says the truth about itself: one version, package data that exists, and
no dependency that nothing imports."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import rabbitry

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "rabbitry"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

# Distribution name -> the module it is imported as, where the two differ.
IMPORT_NAMES = {
    "aio-pika": "aio_pika",
    "pydantic-settings": "pydantic_settings",
    "argon2-cffi": "argon2",
    "prometheus-client": "prometheus_client",
    "pyyaml": "yaml",
    "opentelemetry-api": "opentelemetry",
}


DRIVERS = {"aiosqlite", "asyncpg"}


def test_the_version_lives_in_one_place() -> None:
    assert importlib.metadata.version("rabbitry") == rabbitry.__version__
    assert "version" in PYPROJECT["project"]["dynamic"]
    hits = [
        p for p in PACKAGE.rglob("*.py") if re.search(r'__version__\s*=\s*"', p.read_text("utf-8"))
    ]
    assert hits == [PACKAGE / "_version.py"]


def test_package_data_names_only_files_that_exist() -> None:
    for pattern in PYPROJECT["tool"]["setuptools"]["package-data"]["rabbitry"]:
        assert list(PACKAGE.glob(pattern)), f"package-data {pattern!r} matches no file"


def test_every_parts_migrations_and_the_alembic_environment_ship_as_package_data() -> None:
    # Outside any Python package (Alembic loads them by path), they ship only as package data:
    # a revision left out would leave an installed Rabbitry unable to migrate.
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["rabbitry"]
    shipped = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    needed = [*PACKAGE.glob("*/migrations/*.py"), *PACKAGE.glob("storage/alembic/*")]
    assert {p.parent.parent.name for p in PACKAGE.glob("*/migrations/*.py")} == {
        "outbox",
        "events",
        "sessions",
        "chat",
    }
    missing = [str(p.relative_to(PACKAGE)) for p in needed if p.is_file() and p not in shipped]
    assert not missing, f"not in package-data: {missing}"


def test_every_runtime_dependency_is_imported_by_the_package() -> None:
    source = "\n".join(p.read_text("utf-8") for p in PACKAGE.rglob("*.py"))
    for requirement in PYPROJECT["project"]["dependencies"]:
        name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        if name in DRIVERS:  # loaded by SQLAlchemy from the URL scheme Rabbitry writes
            assert f"+{name}://" in source, f"no database URL selects the {name} driver"
            continue
        imported = re.search(rf"^\s*(from|import) {module}\b", source, re.MULTILINE)
        assert imported, f"{name} is a dependency but nothing in src/rabbitry imports {module}"
