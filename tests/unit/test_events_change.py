"""Change events: what a module may send, what is refused and why, and how history folds."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from rabbitry.errors import MessageError
from rabbitry.events.change import (
    ChangeEvent,
    ChangeType,
    EntityState,
    RecordedEvent,
    fold,
    parse_change,
    parse_time,
    user_from_text,
)
from rabbitry.events.incoming import Incoming, incoming_of, parse_row

T0 = dt.datetime(2025, 2, 6, 12, 0, tzinfo=dt.UTC)


def test_the_seed_example_is_a_valid_update() -> None:
    body = {
        "entity": "App\\Models\\Entity",
        "id": 1,
        "user": 1,
        "data": {"property1": "value1", "property2": 123},
    }
    change = parse_change("update", body)
    assert change == ChangeEvent(
        ChangeType.UPDATE, "App\\Models\\Entity", 1, 1, {"property1": "value1", "property2": 123}
    )
    assert change.payload() == body


def test_system_user_and_delete_without_data_are_accepted() -> None:
    change = parse_change("delete", {"entity": "orders", "id": 7, "user": "system"})
    assert change.user == "system"
    assert change.data is None
    assert change.payload() == {"entity": "orders", "id": 7, "user": "system"}


def test_delete_may_carry_data() -> None:
    change = parse_change("delete", {"entity": "orders", "id": 7, "user": 3, "data": {"x": 1}})
    assert change.data == {"x": 1}


def test_unknown_extra_keys_are_tolerated() -> None:
    change = parse_change("insert", {"entity": "e", "id": 1, "user": 2, "data": {}, "note": "x"})
    assert change.payload() == {"entity": "e", "id": 1, "user": 2, "data": {}}


def _nested(depth: int) -> dict[str, Any]:
    """``data`` with ``depth`` objects and arrays nested in it (the outer object is one)."""
    value: Any = 1
    for level in range(depth - 1):
        value = [value] if level % 2 else {"k": value}
    return {"a": value}


@pytest.mark.parametrize(
    ("job", "body", "reason"),
    [
        ("create", {"entity": "e", "id": 1, "user": 1, "data": {}}, "unknown change type 'create'"),
        ("insert", [1, 2], "body must be a JSON object, got array"),
        ("insert", {"id": 1, "user": 1, "data": {}}, "missing 'entity'"),
        ("insert", {"entity": "e", "user": 1, "data": {}}, "missing 'id'"),
        ("insert", {"entity": "e", "id": 1, "data": {}}, "missing 'user'"),
        ("insert", {"entity": "e", "id": 1, "user": 1}, "'data' is required for insert"),
        ("update", {"entity": "e", "id": 1, "user": 1}, "'data' is required for update"),
        ("update", {"entity": "e", "id": 1, "user": 1, "data": None}, "required for update"),
        ("insert", {"entity": "", "id": 1, "user": 1, "data": {}}, "'entity' must not be empty"),
        ("insert", {"entity": "  ", "id": 1, "user": 1, "data": {}}, "must not be empty"),
        ("insert", {"entity": 5, "id": 1, "user": 1, "data": {}}, "'entity' must be a string"),
        ("insert", {"entity": "e" * 256, "id": 1, "user": 1, "data": {}}, "longer than 255"),
        ("insert", {"entity": "e", "id": "1", "user": 1, "data": {}}, "'id' must be an integer"),
        ("insert", {"entity": "e", "id": 1.5, "user": 1, "data": {}}, "'id' must be an integer"),
        ("insert", {"entity": "e", "id": True, "user": 1, "data": {}}, "got boolean"),
        ("insert", {"entity": "e", "id": 2**63, "user": 1, "data": {}}, "64-bit"),
        ("insert", {"entity": "e", "id": 1, "user": "bob", "data": {}}, "'user' must be a user id"),
        ("insert", {"entity": "e", "id": 1, "user": None, "data": {}}, '"system", got null'),
        ("insert", {"entity": "e", "id": 1, "user": 1, "data": [1]}, "'data' must be a JSON obj"),
        ("delete", {"entity": "e", "id": 1, "user": 1, "data": "gone"}, "got string"),
        # Inside data (parse_row encodes first and walks only what the text leaves in doubt).
        (
            "update",
            {"entity": "e", "id": 1, "user": 1, "data": {"a": "x\x00"}},
            "'data'.a contains",
        ),
        (
            "update",
            {"entity": "e", "id": 1, "user": 1, "data": {"\x00": 1}},
            "a key of 'data' contains",
        ),
        (
            "update",
            {"entity": "e", "id": 1, "user": 1, "data": {"a": ["\ud800"]}},
            "lone surrogate",
        ),
        ("update", {"entity": "e", "id": 1, "user": 1, "data": {"a": float("nan")}}, "is nan"),
        ("update", {"entity": "e", "id": 1, "user": 1, "data": {"a": float("-inf")}}, "is -inf"),
        ("update", {"entity": "e", "id": 1, "user": 1, "data": _nested(513)}, "deeper than 512"),
    ],
)
def test_invalid_change_events_are_refused_with_a_reason(job: str, body: Any, reason: str) -> None:
    with pytest.raises(MessageError, match=reason.replace("(", r"\(")) as model:
        parse_change(job, body)
    # The workflow worker's way, straight to the columns: the same refusal, the same words.
    with pytest.raises(MessageError) as row:
        parse_row(job, body, "m-1", T0)
    assert str(row.value) == str(model.value)


def test_data_the_walk_would_pass_is_stored_as_it_came() -> None:
    # What only looks doubtful in the encoded text: the characters \u0000 in a string, and
    # as deep a nesting as is allowed.
    for data in ({"a": "\\u0000"}, _nested(512), {"a": "[" * 600}):
        body = {"entity": "e", "id": 1, "user": 1, "data": data}
        assert parse_row("update", body, "m-1", T0)[4] == json.dumps(data, ensure_ascii=False)
    # A body refused for its data and for its message id: the data's reason, first.
    body = {"entity": "e", "id": 1, "user": 1, "data": {"a": "x\x00"}}
    with pytest.raises(MessageError, match="U\\+0000"):
        parse_row("update", body, "", T0)


def test_a_row_holds_the_columns_the_store_writes() -> None:
    data = {"total": 1.5, "name": "é"}
    body = {"entity": "orders", "id": 7, "user": 3, "data": data}
    assert parse_row("update", body, "m-1", T0) == (
        "orders", 7, "update", "3", '{"total": 1.5, "name": "é"}', "m-1", T0
    )  # fmt: skip
    deleted = {"entity": "orders", "id": 7, "user": "system"}
    assert parse_row("delete", deleted, "m-2", T0)[2:5] == ("delete", "system", None)
    with pytest.raises(MessageError, match="message id"):
        parse_row("delete", deleted, "", T0)  # checked after the body, as Incoming does
    # Back to the model, for the ways that take models (SQLite, a batch with a redelivery).
    incoming = incoming_of(parse_row("update", body, "m-1", T0))
    assert incoming == Incoming(ChangeEvent(ChangeType.UPDATE, "orders", 7, 3, data), "m-1", T0)


def test_the_python_api_validates_too() -> None:
    with pytest.raises(MessageError, match="'data' is required for insert"):
        ChangeEvent(ChangeType.INSERT, "e", 1)
    # A plain string, as a caller without type checking passes it, becomes the enum.
    assert ChangeEvent("delete", "e", 1).type is ChangeType.DELETE  # type: ignore[arg-type]


def _event(version: int, kind: str, data: dict[str, Any] | None, minutes: int = 0) -> RecordedEvent:
    return RecordedEvent(
        sequence=version,
        entity="e",
        id=1,
        version=version,
        type=ChangeType(kind),
        user=1,
        data=data,
        message_id=f"m{version}",
        occurred_at=T0 + dt.timedelta(minutes=minutes),
        recorded_at=T0,
    )


def test_fold_applies_insert_then_updates_of_changed_attributes() -> None:
    state = fold(
        [
            _event(1, "insert", {"name": "a", "qty": 1}),
            _event(2, "update", {"qty": 2}),
            _event(3, "update", {"note": "x"}, minutes=5),
        ],
        EntityState("e", 1),
    )
    assert state.version == 3
    assert not state.deleted
    assert state.data == {"name": "a", "qty": 2, "note": "x"}
    assert state.updated_at == T0 + dt.timedelta(minutes=5)


def test_a_deleted_entity_says_so_and_keeps_what_it_was() -> None:
    state = fold(
        [_event(1, "insert", {"name": "a"}), _event(2, "delete", None)], EntityState("e", 1)
    )
    assert state.deleted
    assert state.to_json()["deleted"] is True
    assert state.data == {"name": "a"}


def test_reinsert_after_delete_starts_over() -> None:
    state = fold(
        [
            _event(1, "insert", {"name": "a", "old": 1}),
            _event(2, "delete", None),
            _event(3, "insert", {"name": "b"}),
        ],
        EntityState("e", 1),
    )
    assert not state.deleted
    assert state.data == {"name": "b"}


def test_an_insert_stored_after_updates_does_not_undo_them() -> None:
    state = fold(
        [_event(1, "update", {"qty": 2}), _event(2, "insert", {"name": "a", "qty": 1})],
        EntityState("e", 1),
    )
    assert state.data == {"name": "a", "qty": 2}


def test_fold_continues_from_a_given_state() -> None:
    start = fold([_event(1, "insert", {"n": 1})], EntityState("e", 1))
    assert fold([_event(2, "update", {"n": 2})], start).data == {"n": 2}


def test_stored_user_text_reads_back_as_id_or_system() -> None:
    assert user_from_text("42") == 42
    assert user_from_text("system") == "system"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-02-06 12:00:00", T0),
        ("2025-02-06T12:00:00Z", T0),
        ("2025-02-06T13:00:00+01:00", T0),
        ("2025-02-06", T0 - dt.timedelta(hours=12)),
    ],
)
def test_times_are_iso_8601_and_naive_means_utc(text: str, expected: dt.datetime) -> None:
    assert parse_time(text) == expected


def test_a_bad_time_gives_a_one_line_reason() -> None:
    with pytest.raises(ValueError, match="invalid time 'yesterday'"):
        parse_time("yesterday")
