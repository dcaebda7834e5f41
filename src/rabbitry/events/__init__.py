"""Event sourcing: change events, the emitter, the ORM tracker, the event store and the
workflow module that fills it.

What other parts use (the sessions part emits the change event of a removal, the back-office
reads histories and states) is exported here; the modules behind it are the part's own.

Loaded on first use (PEP 562): importing one of the part's light modules (a pure one, as
the CLI's argument checks do) does not load the database code behind these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rabbitry.exports import lazy_exports

if TYPE_CHECKING:
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
    from rabbitry.events.topology import EventsLayout

MIGRATIONS = Path(__file__).with_name("migrations")
"""This part's Alembic revisions (a version location)."""

_EXPORTS = {
    "SYSTEM_USER": "rabbitry.events.change",
    "ChangeEvent": "rabbitry.events.change",
    "ChangeType": "rabbitry.events.change",
    "EntityState": "rabbitry.events.change",
    "RecordedEvent": "rabbitry.events.change",
    "parse_time": "rabbitry.events.change",
    "Emitter": "rabbitry.events.emitter",
    "EventStore": "rabbitry.events.store",
    "EventsLayout": "rabbitry.events.topology",
}


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = [
    "MIGRATIONS",
    "SYSTEM_USER",
    "ChangeEvent",
    "ChangeType",
    "Emitter",
    "EntityState",
    "EventStore",
    "EventsLayout",
    "RecordedEvent",
    "parse_time",
]
