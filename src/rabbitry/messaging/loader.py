"""Find a user's services by name, for ``rabbitry run MODULE:APP``.

``APP`` names a :class:`~rabbitry.messaging.worker.Worker` (or any
:class:`~rabbitry.messaging.service.Service`), or a list or tuple of them, at the top level of
``MODULE`` (``shop.workers:worker``; a dotted ``APP`` reaches an attribute of an attribute, as
uvicorn's ``module:app.attr`` does). ``MODULE`` is imported with ``app_dir`` first on
``sys.path``, so a module beside the user's shell is found as ``python -m`` would find it.

What the name gets wrong (no colon, no such module, no such attribute, not a service) raises
:class:`~rabbitry.errors.Invalid` with a one-line reason. An error raised by the user's own
module while it is imported (a typo, a package it imports that is not installed) is theirs:
it propagates as it is, with its traceback.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

from rabbitry.errors import Invalid
from rabbitry.messaging.service import Service

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_EXAMPLE = "e.g. shop.workers:worker"


def parse_spec(spec: str) -> tuple[str, str]:
    """``"module:app"`` as ``(module, app)``; :class:`Invalid` when it is not that shape."""
    module, sep, attribute = spec.partition(":")
    if not sep or not _DOTTED.match(module) or not _DOTTED.match(attribute):
        raise Invalid(f"{spec!r} is not MODULE:APP ({_EXAMPLE})")
    return module, attribute


def as_services(value: Any, where: str) -> tuple[Service, ...]:
    """``value`` as the services to run: one service, or a non-empty list or tuple of them."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items:
        raise Invalid(f"{where} is an empty {type(value).__name__}: nothing to run")
    for item in items:
        if not _is_service(item):
            raise Invalid(
                f"{where} is a {type(item).__name__}, not a Worker (or a service with a name "
                "and async run(stopping)), nor a list of them"
            )
    return tuple(items)


def load_services(spec: str, app_dir: str | Path = ".") -> tuple[Service, ...]:
    """The services ``spec`` (``"module:app"``) names, importing its module from ``app_dir``
    first (then the installed packages)."""
    module_name, attribute = parse_spec(spec)
    folder = str(Path(app_dir).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module the name gives (or a package on its way) is the user's mistake here;
        # a module that one imports and cannot find is a bug in it, shown as it is.
        if exc.name is None or not _is_prefix(exc.name, module_name):
            raise
        raise Invalid(
            f"no module {module_name!r} in {folder} or the installed packages ({_EXAMPLE})"
        ) from None
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise Invalid(f"module {module_name!r} has no attribute {attribute!r}") from None
    return as_services(value, f"{module_name}:{attribute}")


def _is_prefix(name: str, dotted: str) -> bool:
    return dotted == name or dotted.startswith(f"{name}.")


def _is_service(value: object) -> bool:
    # A structural check, as the Service protocol is: a name, and run as a coroutine function.
    run = getattr(value, "run", None)
    return isinstance(getattr(value, "name", None), str) and callable(run)
