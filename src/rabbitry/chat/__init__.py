"""The horizontally scaled WebSocket chat."""

from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")
"""This part's Alembic revisions (a version location)."""
