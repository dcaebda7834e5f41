"""HTTP: an entity's change history and its rebuilt state.

``GET /api/events/{entity}/{id}`` → ``{"entity", "id", "events": [...]}``;
``GET /api/events/{entity}/{id}/state[?at=TIME]`` → the state object. 404 when the entity has
no events (as of ``at``), 400 for an unreadable ``at``, 422 for a bad id. An entity name with
backslashes travels percent-encoded: ``App%5CModels%5COrder``. Every route needs the admin
token (:func:`rabbitry.web.require_admin`): an entity's history is not for anyone who can
reach the port.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query

from rabbitry.errors import NotFound
from rabbitry.events.change import MAX_ENTITY_LENGTH, parse_time
from rabbitry.events.store import EventStore
from rabbitry.web import DatabaseDep, require_admin

router = APIRouter(prefix="/api/events", tags=["events"], dependencies=[Depends(require_admin)])

EntityPath = Annotated[str, Path(min_length=1, max_length=MAX_ENTITY_LENGTH)]
IdPath = Annotated[int, Path(ge=-(2**63), le=2**63 - 1)]


@router.get("/{entity}/{entity_id}")
async def history(entity: EntityPath, entity_id: IdPath, database: DatabaseDep) -> dict[str, Any]:
    """Every change event of the entity, version 1 first."""
    events = await EventStore(database).history(entity, entity_id)
    if not events:
        raise NotFound(f"no events for {entity} {entity_id}")
    return {"entity": entity, "id": entity_id, "events": [e.to_json() for e in events]}


@router.get("/{entity}/{entity_id}/state")
async def state(
    entity: EntityPath,
    entity_id: IdPath,
    database: DatabaseDep,
    at: Annotated[str | None, Query(description="ISO 8601 time; naive means UTC")] = None,
) -> dict[str, Any]:
    """The entity folded from its events (as of ``at``); a deleted one has ``deleted: true``."""
    when = parse_time(at) if at is not None else None
    result = await EventStore(database).state(entity, entity_id, when)
    if result is None:
        raise NotFound(f"no events for {entity} {entity_id}")
    return result.to_json()
