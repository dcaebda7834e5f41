"""AMQP header tables <-> JSON, losslessly, for the outbox's ``headers`` column. Pure, no I/O.

A header table holds values JSON has no type for (byte arrays, timestamps, decimals). They are
stored as one-key objects tagged with ``$``: ``{"$bytes": "<utf-8 text>"}`` (``rr_headers`` stays
readable in the back-office), ``{"$base64": ...}`` for other bytes, ``{"$datetime": iso}`` and
``{"$decimal": "1.50"}``. A nested table whose only key starts with ``$`` is wrapped in
``{"$table": ...}`` so it can never be mistaken for a tag.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from rabbitry.errors import MessageError

_TAGS = frozenset({"$bytes", "$base64", "$datetime", "$decimal", "$table"})


def headers_to_json(table: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-serialisable copy of an AMQP header table."""
    return {str(name): _to_json(value) for name, value in table.items()}


def headers_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """The header table :func:`headers_to_json` was given (integers come back as ``int``)."""
    return {str(name): _from_json(value) for name, value in data.items()}


def _to_json(value: Any) -> Any:
    if value is None or isinstance(value, bool | str | float):
        return value
    if isinstance(value, int):
        return int(value)  # Int64 and friends: the tag is chosen again when re-encoding
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return {"$bytes": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"$base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, Mapping):
        table = headers_to_json(value)
        if len(table) == 1 and next(iter(table)).startswith("$"):
            return {"$table": table}
        return table
    if isinstance(value, list | tuple):
        return [_to_json(item) for item in value]
    raise MessageError(f"cannot store a header value of type {type(value).__name__}")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, inner),) = value.items()
        if tag in _TAGS:
            return _untag(tag, inner)
    return headers_from_json(value)


def _untag(tag: str, inner: Any) -> Any:
    try:
        if tag == "$bytes":
            return str(inner).encode("utf-8")
        if tag == "$base64":
            return base64.b64decode(str(inner), validate=True)
        if tag == "$datetime":
            return dt.datetime.fromisoformat(str(inner))
        if tag == "$decimal":
            return Decimal(str(inner))
    except (ValueError, binascii.Error, InvalidOperation) as exc:
        raise MessageError(f"stored header {tag} value is corrupt: {exc}") from exc
    # "$table": a plain nested table that merely looked like a tag
    return headers_from_json(inner) if isinstance(inner, dict) else inner
