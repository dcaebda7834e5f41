"""docs/api.md, the reference of the stable public API, generated from the docstrings.

The public API is what ``from rabbitry import …`` (``rabbitry.__all__``) and ``from
rabbitry.testing import …`` give; the rest of the package is internal. Write the page again
after changing a public docstring or signature (tests/unit/test_api_reference.py fails until
then)::

    .venv/bin/python tests/api_reference.py > docs/api.md
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

import rabbitry
import rabbitry.testing

MODULES = (rabbitry, rabbitry.testing)

INTRO = """\
# API reference

The stable public API: every name `from rabbitry import …` and `from rabbitry.testing import …`
give, generated from their docstrings. Everything else under `rabbitry.` is internal and may
change in any release (see [library.md](library.md#stable-api-and-internals)). Do not edit this
page: `.venv/bin/python tests/api_reference.py > docs/api.md` writes it, and
`tests/unit/test_api_reference.py` fails while it is out of date.
"""


class _Text:
    """An annotation shown as written in the source (they are strings under PEP 563)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _annotation(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return value
    return _Text(value if isinstance(value, str) else inspect.formatannotation(value))


def signature(obj: Any) -> str:
    """``(a: int, *, b: str = 'x') -> None`` as the source writes it; "" when there is none."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    sig = sig.replace(
        parameters=[
            p.replace(annotation=_annotation(p.annotation)) for p in sig.parameters.values()
        ],
        return_annotation=_annotation(sig.return_annotation),
    )
    if inspect.isclass(obj):
        sig = sig.replace(return_annotation=inspect.Signature.empty)
    return re.sub(r" at 0x[0-9a-f]+", "", str(sig))  # no memory address in a default's repr


def own_doc(obj: Any) -> str:
    """The docstring ``obj`` itself has: none inherited, none a dataclass made up."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__):
        return ""
    return inspect.cleandoc(doc)


def members(cls: type) -> Iterator[tuple[str, Any]]:
    """The public methods and properties ``cls`` defines itself, in source order."""
    for name, value in cls.__dict__.items():
        if name.startswith("_"):
            continue
        if isinstance(value, staticmethod | classmethod):
            yield name, value.__func__
        elif inspect.isfunction(value) or isinstance(value, property):
            yield name, value


def kind(obj: Any) -> str:
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        return "enum" if issubclass(obj, enum.Enum) else "class"
    return "function" if callable(obj) and inspect.isroutine(obj) else "alias"


def entry(module: str, name: str, obj: Any) -> list[str]:
    """One name's section."""
    what = kind(obj)
    lines = [f"### `{name}`", ""]
    if what == "alias":
        lines += ["```python", f"{name} = {_alias(obj)}", "```", ""]
        return lines
    if what in ("class", "exception", "enum"):
        bases = ", ".join(b.__name__ for b in obj.__bases__ if b is not object)
        if what == "class" and not getattr(obj, "_is_protocol", False):
            head = f"class {name}{signature(obj)}"
        else:  # an exception, an enum or a protocol: what it is matters more than its __init__
            head = f"class {name}({bases or 'Protocol'})"
    else:
        head = f"{'async ' if inspect.iscoroutinefunction(obj) else ''}def {name}{signature(obj)}"
    lines += ["```python", head, "```", ""]
    if doc := own_doc(obj):
        lines += [doc, ""]
    if what == "enum":
        lines += [", ".join(f"`{m.name}` = `{m.value!r}`" for m in obj), ""]
    if what == "class":
        for member, value in members(obj):
            lines += _member(name, member, value)
    return lines


def _member(owner: str, name: str, value: Any) -> list[str]:
    if isinstance(value, property):
        head = f"`{owner}.{name}` (property)"
        doc = inspect.cleandoc(value.__doc__ or "")
    else:
        prefix = "async " if inspect.iscoroutinefunction(value) else ""
        params = re.sub(
            r"^\((self|cls)(, |\))", lambda m: "(" if m[2] == ", " else "()", signature(value)
        )
        head = f"`{prefix}{owner}.{name}{params}`"
        doc = own_doc(value)
    return [f"- {head}" + (f": {_indent(doc)}" if doc else ""), ""]


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def _alias(obj: Any) -> str:
    text = str(obj) if isinstance(obj, types.UnionType) else repr(obj)
    return re.sub(r"\b(typing|collections\.abc|rabbitry(\.\w+)*)\.", "", text)


def render() -> str:
    out = [INTRO]
    for module in MODULES:
        names = sorted(n for n in module.__all__ if not n.startswith("_"))
        out += [f"## `{module.__name__}`", "", inspect.cleandoc(module.__doc__ or ""), ""]
        out += [" · ".join(f"[`{n}`](#{n.lower()})" for n in names), ""]
        for name in names:
            out += entry(module.__name__, name, getattr(module, name))
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
