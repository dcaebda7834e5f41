"""Each part's public surface (its package ``__init__``) names what it exports, and loads it
only when asked: the other parts and the back-office use nothing else."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PARTS = ["rabbitry.outbox", "rabbitry.events", "rabbitry.sessions", "rabbitry.chat"]


@pytest.mark.parametrize("name", PARTS)
def test_every_name_a_part_exports_resolves(name: str) -> None:
    part = importlib.import_module(name)
    for export in getattr(part, "__all__", ["MIGRATIONS"]):
        assert getattr(part, export) is not None, f"{name}.{export}"
    assert part.MIGRATIONS.is_dir()
    with pytest.raises(AttributeError):
        part.NoSuchThing  # noqa: B018


def test_a_light_module_of_a_part_loads_no_database_code() -> None:
    # The CLI checks a published body with rabbitry.events.portable: a pure module, which must
    # not drag the event store (and SQLAlchemy) in through the part's __init__.
    heavy = ("sqlalchemy", "rabbitry.events.store", "rabbitry.outbox.store")
    code = (
        "import sys, rabbitry.events.portable, rabbitry.outbox.filters;"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
