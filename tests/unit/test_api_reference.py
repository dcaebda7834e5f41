"""docs/api.md is the reference tests/api_reference.py generates from today's docstrings."""

from __future__ import annotations

from pathlib import Path

import rabbitry
import rabbitry.testing
from api_reference import render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_the_api_page_is_up_to_date_with_the_docstrings() -> None:
    # On failure: .venv/bin/python tests/api_reference.py > docs/api.md
    assert PAGE.read_text(encoding="utf-8") == render()


def test_every_public_name_has_its_section() -> None:
    page = PAGE.read_text(encoding="utf-8")
    for module in (rabbitry, rabbitry.testing):
        for name in module.__all__:
            if not name.startswith("_"):
                assert f"### `{name}`" in page, name
