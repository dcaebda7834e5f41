"""The distribution's optional parts (``pyproject.toml``'s extras), and how to tell one is
missing.

``pip install rabbitry`` is the library alone: the wire client, the envelope, the publisher,
the worker, the in-memory test broker and the library's commands (``rabbitry run``,
``publish``, ``consume``, ``dead-letters``). The runnable system (``rabbitry up``, ``serve``,
``worker``, the parts and their databases) is ``rabbitry[system]``; ``rabbitry run --reload``'s
file watcher is ``rabbitry[reload]``. A command that needs an extra the install lacks says
which, in one line, instead of a traceback.
"""

from __future__ import annotations

import importlib.util

SYSTEM = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "sqlalchemy",
        "alembic",
        "aiosqlite",
        "asyncpg",
        "redis",
        "jinja2",
        "argon2",
        "httpx",
        "pymongo",
    }
)
"""The import names of the ``[system]`` extra's packages (``tests/unit/test_extras.py`` checks
them against ``pyproject.toml``)."""

RELOAD = frozenset({"watchfiles"})
"""The import names of the ``[reload]`` extra's packages."""

EXTRAS = {"system": SYSTEM, "reload": RELOAD}


def extra_of(error: ModuleNotFoundError) -> str | None:
    """The extra whose absence raised ``error`` (``"system"``, ``"reload"``), or None when the
    missing module belongs to no extra (a real bug, to be shown as it is)."""
    top = (error.name or "").partition(".")[0]
    return next((extra for extra, modules in EXTRAS.items() if top in modules), None)


def installed(extra: str) -> bool:
    """Whether every package of ``extra`` can be imported (none is imported to find out)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in EXTRAS[extra])
    except ImportError:  # an import hook that refuses the name: not installed either
        return False


def hint(extra: str) -> str:
    """What to run to get ``extra``."""
    return f"pip install 'rabbitry[{extra}]'"
