"""``rabbitry events history|state``: an entity's change history and its rebuilt state."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated

import typer

from rabbitry.config import Settings
from rabbitry.console import fail, run, settings, text
from rabbitry.events.change import MAX_ENTITY_LENGTH, EntityState, RecordedEvent, parse_time
from rabbitry.events.store import EventStore
from rabbitry.storage import open_database

NOT_FOUND = 1
_DIGITS = re.compile(r"-?[0-9]+")

events_app = typer.Typer(
    help="Change events: an entity's history, and its state rebuilt from it.",
    no_args_is_help=True,
)

EntityArg = Annotated[
    str, typer.Argument(metavar="ENTITY", help="Entity type, e.g. 'App\\Models\\Order'.")
]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="Entity id (an integer).")]


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")


@events_app.command("history")
def history(ctx: typer.Context, entity: EntityArg, entity_id: IdArg) -> None:
    """Print the entity's change events as JSON lines, version 1 first.

    Example: rabbitry events history 'App\\Models\\Order' 7
    """
    key = _entity(entity), _id(entity_id)
    events = run(_history(settings(ctx), *key))
    if not events:
        fail(f"no events for {key[0]} {key[1]}", code=NOT_FOUND)
    for event in events:
        print(json.dumps(event.to_json(), ensure_ascii=False))


@events_app.command("state")
def state(
    ctx: typer.Context,
    entity: EntityArg,
    entity_id: IdArg,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            metavar="TIME",
            help="Rebuild as of this time: '2025-02-06 12:00:00' (UTC) or ISO 8601 with zone.",
        ),
    ] = None,
) -> None:
    """Print the entity's state rebuilt from its events, as a JSON object.

    The events up to --at (default: all) are folded: insert sets the attributes, update
    changes some, delete marks the entity "deleted": true.

    Example: rabbitry events state 'App\\Models\\Order' 7 --at '2025-02-06 12:00:00'
    """
    key = _entity(entity), _id(entity_id)
    when: dt.datetime | None = None
    if at is not None:
        try:
            when = parse_time(text(at, "--at"))
        except ValueError as exc:
            fail(f"--at: {exc}")
    result = run(_state(settings(ctx), *key, when))
    if result is None:
        suffix = f" at or before {when.isoformat()}" if when else ""
        fail(f"no events for {key[0]} {key[1]}{suffix}", code=NOT_FOUND)
    print(json.dumps(result.to_json(), ensure_ascii=False))


async def _history(config: Settings, entity: str, entity_id: int) -> list[RecordedEvent]:
    async with open_database(config.sql_url) as database:
        return await EventStore(database).history(entity, entity_id)


async def _state(
    config: Settings, entity: str, entity_id: int, at: dt.datetime | None
) -> EntityState | None:
    async with open_database(config.sql_url) as database:
        return await EventStore(database).state(entity, entity_id, at)


def _entity(value: str) -> str:
    text(value, "ENTITY")
    if not value.strip():
        fail("ENTITY must not be empty")
    if len(value) > MAX_ENTITY_LENGTH:
        fail(f"ENTITY is longer than {MAX_ENTITY_LENGTH} characters")
    return value


def _id(value: str) -> int:
    # ASCII digits only: int() would also read "1_0" as 10 and "\u0661" (Arabic-Indic) as 1.
    digits = text(value, "ID").strip(" \t")
    if not _DIGITS.fullmatch(digits):
        fail(f"ID must be an integer, got {value!r} (ASCII digits, optionally after '-')")
    number = int(digits)
    if not -(2**63) <= number < 2**63:
        fail("ID is out of the 64-bit integer range")
    return number
