"""Lazy exports (PEP 562) for a package's ``__init__``: one mapping of name → module.

``import rabbitry`` or a part's package then loads none of the modules behind its names until
one is used, so a CLI command or a pure module pays only for what it touches.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: MutableMapping[str, Any]
) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps each public name to the
    module that defines it; a name once loaded is kept in ``namespace`` (the package's
    ``globals()``) as a plain attribute."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
