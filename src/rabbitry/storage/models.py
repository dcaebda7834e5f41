"""Imports every model module so that ``Base.metadata`` knows all tables (for Alembic)."""

from __future__ import annotations

import rabbitry.events.models
import rabbitry.outbox.models  # noqa: F401

__all__: list[str] = []
