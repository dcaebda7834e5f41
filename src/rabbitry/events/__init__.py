"""Event sourcing: change events, the emitter, the ORM tracker, the event store, the workflow
module."""

from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")
"""This part's Alembic revisions (a version location)."""
