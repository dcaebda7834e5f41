"""The contingency outbox: pending messages, requeue, the queue registry, the relay."""

from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")
"""This part's Alembic revisions (a version location)."""
