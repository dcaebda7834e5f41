"""What the event store and a PHP consumer can keep: the checks that refuse a value at once."""

from __future__ import annotations

import json

import pytest

from rabbitry.errors import MessageError
from rabbitry.events.change import ChangeEvent, ChangeType, parse_change
from rabbitry.events.portable import MAX_DEPTH, check_json, check_text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"price": NaN}', "'data'.price is nan"),
        ('{"a": [1, {"b": Infinity}]}', "'data'.a[1].b is inf"),
        ('{"a": -Infinity}', "'data'.a is -inf"),
        ('{"note": "a\\u0000b"}', "'data'.note contains U+0000"),
        ('{"k\\u0000": 1}', "a key of 'data' contains U+0000"),
        ('{"s": "\\ud800"}', "'data'.s is not valid Unicode"),
    ],
)
def test_a_change_whose_data_the_store_cannot_keep_is_refused_with_where_it_is(
    body: str, reason: str
) -> None:
    with pytest.raises(MessageError) as caught:
        parse_change("update", {"entity": "E", "id": 1, "user": 1, "data": json.loads(body)})
    assert str(caught.value).startswith(reason)


@pytest.mark.parametrize("entity", ["App\x00Order", "App\ud800Order"])
def test_an_entity_name_the_database_cannot_store_is_refused(entity: str) -> None:
    with pytest.raises(MessageError, match="'entity'"):
        ChangeEvent(ChangeType.INSERT, entity, 1, 1, {})


def test_finite_numbers_and_paired_surrogates_are_fine() -> None:
    data = json.loads('{"n": 1.5e300, "emoji": "\\ud83d\\ude00", "list": [0, -0.0, null]}')
    ChangeEvent(ChangeType.UPDATE, "E", 1, 1, data)


def test_nesting_is_bounded_by_php_json_decode_depth_without_recursion() -> None:
    deep: object = 1
    for _ in range(MAX_DEPTH):
        deep = [deep]
    check_json(deep, "body")  # 512 levels: what PHP still decodes
    with pytest.raises(MessageError, match="nested deeper than 512"):
        check_json([deep], "body")
    very: object = 1
    for _ in range(100_000):
        very = {"a": very}
    with pytest.raises(MessageError, match="nested deeper"):
        check_json(very, "body")  # no RecursionError


def test_check_text_accepts_ordinary_unicode() -> None:
    check_text("Zürich 東京", "entity")
