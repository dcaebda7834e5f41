"""Values every store and every consumer can keep: the checks behind "refused at once". Pure.

Python's ``json`` reads and writes things that are not JSON, or that a database cannot hold:

* ``NaN``, ``Infinity`` and ``-Infinity`` (``json.dumps`` writes them by default): PostgreSQL's
  ``json`` type refuses them, and so does PHP's ``json_decode``, so a PHP consumer cannot read
  a body that holds one;
* U+0000 (NUL): PostgreSQL text cannot hold it at all, and a ``json`` value with ``\\u0000``
  cannot be turned back into text (``->>`` fails);
* lone UTF-16 surrogates (``"\\ud800"``): not Unicode; they cannot be encoded as UTF-8, and
  PHP refuses them (``JSON_ERROR_UTF16``);
* nesting deeper than PHP's default ``json_decode`` depth (512).

Each check raises :class:`~rabbitry.errors.MessageError` with a one-line reason that names
where the bad value is (``data.items[3].price``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rabbitry.errors import MessageError

# PHP's json_decode() default $depth: a PHP consumer cannot decode anything deeper.
MAX_DEPTH = 512


def check_text(value: str, what: str) -> None:
    """Refuse a string a database or a UTF-8 consumer cannot keep (NUL, lone surrogates)."""
    if "\x00" in value:
        raise MessageError(f"{what} contains U+0000 (NUL), which the database cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError(f"{what} is not valid Unicode (a lone surrogate)") from None


def check_json(value: Any, what: str, *, max_depth: int = MAX_DEPTH, nul: bool = False) -> None:
    """Refuse a decoded JSON value holding a non-finite number, a string :func:`check_text`
    refuses (keys included), or nesting deeper than ``max_depth``. With ``nul``, U+0000 is
    fine (a message body for consumers, not a value for the database).

    A fast pass answers for the common, clean value (it runs for every message a workflow
    worker stores); only a value it doubts is walked again to name where the bad part is.
    """
    if not _clean(value, max_depth):
        _explain(value, what, max_depth, nul)


def _clean(value: Any, depth: int) -> bool:
    # Plain loops, one frame per level: at most MAX_DEPTH frames deep.
    kind = type(value)
    if kind is str:
        return "\x00" not in value and (value.isascii() or _encodable(value))
    if kind is float:
        return math.isfinite(value)
    if kind is dict:
        if depth < 1:
            return False
        for key, child in value.items():
            if type(key) is not str or not _clean(key, 0) or not _clean(child, depth - 1):
                return False
        return True
    if kind is list:
        if depth < 1:
            return False
        for child in value:  # noqa: SIM110 - all() over a generator costs two frames a level
            if not _clean(child, depth - 1):
                return False
        return True
    # Another type (a Mapping, a tuple, a number subclass): the careful walk decides.
    return value is None or kind is int or kind is bool


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _explain(value: Any, what: str, max_depth: int, nul: bool) -> None:
    """The careful walk: iterative (a deep value cannot exhaust the stack), naming the path."""
    stack: list[tuple[Any, str, int]] = [(value, what, 1)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            check_text(item.replace("\x00", "") if nul else item, where)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise MessageError(
                    f"{where} is {item!r}: JSON has no NaN or Infinity "
                    "(PHP's json_decode and PostgreSQL refuse them)"
                )
        elif isinstance(item, Mapping | list | tuple):
            if depth > max_depth:
                raise MessageError(f"{what} is nested deeper than {max_depth} levels")
            if isinstance(item, Mapping):
                for key, child in item.items():
                    label = f"{where}.{key}" if isinstance(key, str) else f"{where}[{key!r}]"
                    if isinstance(key, str):
                        check_text(key.replace("\x00", "") if nul else key, f"a key of {where}")
                    stack.append((child, label, depth + 1))
            else:
                stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
