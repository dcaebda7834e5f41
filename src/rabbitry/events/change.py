"""Change events: the model, its validation, and folding a history into a state.

Pure, no I/O. A change event is a message of type (``rr_job``) ``insert``, ``update`` or
``delete`` whose body is ``{"entity": str, "id": int, "user": int | "system", "data": object}``;
``data`` is required for insert and update (for an update, only the attributes that changed)
and optional for delete. Anything else is refused with a :class:`MessageError` whose text is
the reason the workflow module dead-letters it with, and so is anything the event store could
not keep (:mod:`rabbitry.events.portable`: NaN or Infinity, NUL, lone surrogates, over-long
names): a value the database would refuse must never reach it inside a batch of good ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from rabbitry.errors import Invalid, MessageError
from rabbitry.events.portable import check_json, check_text

Json = Any
User = int | str

SYSTEM_USER = "system"
MAX_ENTITY_LENGTH = 255
_INT64 = (-(2**63), 2**63 - 1)


class ChangeType(StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


_TYPES = {kind.value: kind for kind in ChangeType}


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change of one entity, as a module reports it. Construction validates."""

    type: ChangeType
    entity: str
    id: int
    user: User = SYSTEM_USER
    data: Mapping[str, Json] | None = None

    def __post_init__(self) -> None:
        if type(self.type) is not ChangeType:  # parse_change passes a ChangeType already
            object.__setattr__(self, "type", _change_type(self.type))
        _check_entity(self.entity)
        _check_int(self.id, "id")
        _check_user(self.user)
        _check_data(self.type, self.data)

    def payload(self) -> dict[str, Json]:
        """The message body; a delete without data leaves ``data`` out."""
        body: dict[str, Json] = {"entity": self.entity, "id": self.id, "user": self.user}
        if self.data is not None:
            body["data"] = dict(self.data)
        return body


def parse_change(message_type: str, payload: Json) -> ChangeEvent:
    """Validate a received change event (its ``rr_job`` and JSON body).

    Unknown extra keys are tolerated, the way RoadRunner tolerates unknown headers.
    """
    if type(payload) is not dict and not isinstance(payload, Mapping):  # dict: no ABC check
        raise MessageError(f"change event body must be a JSON object, got {_kind(payload)}")
    for key in ("entity", "id", "user"):
        if key not in payload:
            raise MessageError(f"change event is missing {key!r}")
    return ChangeEvent(
        type=_change_type(message_type),
        entity=payload["entity"],
        id=payload["id"],
        user=payload["user"],
        data=payload.get("data"),
    )


def parse_fields(
    message_type: str, payload: Json, *, walk: bool = True
) -> tuple[str, str, int, str, Json]:
    """:func:`parse_change`'s checks, in its order and with its reasons, without the model:
    the type, entity, id, user (as the store writes it: text) and data (``None`` or an
    object) of a received change event. What the workflow worker stores from (one object
    less per event). Without ``walk``, the values inside ``data`` are not checked
    (:func:`~rabbitry.events.portable.check_json`): the caller does it next, its own way."""
    if type(payload) is not dict and not isinstance(payload, Mapping):  # dict: no ABC check
        raise MessageError(f"change event body must be a JSON object, got {_kind(payload)}")
    for key in ("entity", "id", "user"):
        if key not in payload:
            raise MessageError(f"change event is missing {key!r}")
    kind = _change_type(message_type)
    entity, entity_id, user = payload["entity"], payload["id"], payload["user"]
    _check_entity(entity)
    _check_int(entity_id, "id")
    _check_user(user)
    data = payload.get("data")
    _check_data(kind, data, walk=walk)
    return kind.value, entity, entity_id, str(user), data


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """A change event as the event store returns it."""

    sequence: int
    entity: str
    id: int
    version: int
    type: ChangeType
    user: User
    data: Mapping[str, Json] | None
    message_id: str
    occurred_at: dt.datetime
    recorded_at: dt.datetime

    def to_json(self) -> dict[str, Json]:
        return {
            "sequence": self.sequence,
            "entity": self.entity,
            "id": self.id,
            "version": self.version,
            "type": str(self.type),
            "user": self.user,
            "data": None if self.data is None else dict(self.data),
            "message_id": self.message_id,
            "occurred_at": self.occurred_at.isoformat(),
            "recorded_at": self.recorded_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class EntityState:
    """An entity rebuilt from its history: attributes as of ``version``."""

    entity: str
    id: int
    version: int = 0
    deleted: bool = False
    data: Mapping[str, Json] = field(default_factory=dict)
    updated_at: dt.datetime | None = None
    updated_by: User | None = None

    def to_json(self) -> dict[str, Json]:
        return {
            "entity": self.entity,
            "id": self.id,
            "version": self.version,
            "deleted": self.deleted,
            "data": dict(self.data),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "updated_by": self.updated_by,
        }


def apply(state: EntityState, event: RecordedEvent) -> EntityState:
    """One step of the fold.

    insert: the entity starts with ``data`` (a re-insert after a delete revives it); an insert
    that arrives after updates of a live entity (several workers can store events out of
    order) only fills in the attributes those updates did not set.
    update: ``data`` overrides those attributes. delete: the entity is gone; its last known
    attributes (plus any the delete carried) stay so that a reader sees what was deleted.
    """
    return fold((event,), state)


def fold(events: Iterable[RecordedEvent], start: EntityState) -> EntityState:
    """Apply ``events`` (in version order) to ``start`` (see :func:`apply`); linear in the
    number of events, with one dict update per event."""
    data = dict(start.data)
    deleted, version = start.deleted, start.version
    updated_at, updated_by = start.updated_at, start.updated_by
    for event in events:
        changes = event.data or {}
        if event.type is ChangeType.INSERT:
            late = version > 0 and not deleted  # a late insert fills in, never undoes updates
            data = {**changes, **data} if late else dict(changes)
            deleted = False
        else:
            data.update(changes)
            deleted = deleted or event.type is ChangeType.DELETE
        version, updated_at, updated_by = event.version, event.occurred_at, event.user
    return replace(
        start,
        version=version,
        deleted=deleted,
        data=data,
        updated_at=updated_at,
        updated_by=updated_by,
    )


def user_from_text(text: str) -> User:
    """The stored form of ``user`` back to an int id or ``"system"``."""
    return int(text) if text.lstrip("-").isdigit() else text


def parse_time(text: str) -> dt.datetime:
    """``2025-02-06 12:00:00``, ``2025-02-06T12:00:00+01:00`` or ``2025-02-06``; naive is UTC.

    Raises :class:`~rabbitry.errors.Invalid` (a ``ValueError``) with a one-line reason.
    """
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise Invalid(
            f"invalid time {text!r}: use ISO 8601, e.g. '2025-02-06 12:00:00' or "
            "'2025-02-06T12:00:00+01:00'"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        # Hours from year 1 or year 9999 in another zone: the beginning or the end of time.
        edge = dt.datetime.min if value.year == dt.MINYEAR else dt.datetime.max
        return edge.replace(tzinfo=dt.UTC)


def _change_type(value: object) -> ChangeType:
    # A dict lookup: iterating the enum costs more than the rest of the validation.
    kind = _TYPES.get(value) if isinstance(value, str) else None
    if kind is not None:
        return kind
    raise MessageError(f"unknown change type {value!r}: expected insert, update or delete")


def _check_entity(value: object) -> None:
    if not isinstance(value, str):
        raise MessageError(f"'entity' must be a string, got {_kind(value)}")
    if not value.strip():
        raise MessageError("'entity' must not be empty")
    if len(value) > MAX_ENTITY_LENGTH:
        raise MessageError(f"'entity' is longer than {MAX_ENTITY_LENGTH} characters")
    check_text(value, "'entity'")


def _check_int(value: object, key: str) -> None:
    # bool is an int in Python but true/false in JSON: never an id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"{key!r} must be an integer, got {_kind(value)}")
    if not _INT64[0] <= value <= _INT64[1]:
        raise MessageError(f"{key!r} is out of the 64-bit integer range")


def _check_user(value: object) -> None:
    if isinstance(value, str):
        if value != SYSTEM_USER:
            raise MessageError(f"'user' must be a user id (integer) or \"system\", got {value!r}")
        return
    try:
        _check_int(value, "user")
    except MessageError:
        raise MessageError(
            f"'user' must be a user id (integer) or \"system\", got {_kind(value)}"
        ) from None


def _check_data(kind: ChangeType, data: object, *, walk: bool = True) -> None:
    if data is None:
        if kind is not ChangeType.DELETE:
            raise MessageError(f"'data' is required for {kind}")
    elif type(data) is not dict and not isinstance(data, Mapping):
        raise MessageError(f"'data' must be a JSON object, got {_kind(data)}")
    elif walk:
        check_json(data, "'data'")


def _kind(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__
