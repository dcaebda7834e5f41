"""Event sourcing: change events, the emitter, the ORM tracker, the event store and the
workflow module that fills it.

What other parts use (the sessions part emits the change event of a removal, the back-office
reads histories and states) is exported here; the modules behind it are the part's own.
"""

from pathlib import Path

from rabbitry.events.change import (
    SYSTEM_USER,
    ChangeEvent,
    ChangeType,
    EntityState,
    RecordedEvent,
    parse_time,
)
from rabbitry.events.emitter import Emitter
from rabbitry.events.store import EventStore

MIGRATIONS = Path(__file__).with_name("migrations")
"""This part's Alembic revisions (a version location)."""

__all__ = [
    "MIGRATIONS",
    "SYSTEM_USER",
    "ChangeEvent",
    "ChangeType",
    "Emitter",
    "EntityState",
    "EventStore",
    "RecordedEvent",
    "parse_time",
]
