"""Where the migrations are: each part's revisions in its own package, run by one environment.

A part that has tables keeps its Alembic revisions in its package's ``migrations/`` folder (a
version location: ``rabbitry/outbox/migrations/0001_outbox.py``) and names it in its registry
entry. Storage names no part: it runs the locations its caller gives (``rabbitry db upgrade``
gives the registry's), and by default every ``migrations/`` folder of the installed parts, found
by that same convention, so that a part's own processes migrate with nothing to be told.

The first five revisions form one chain across the parts (``0001_outbox`` to
``0005_backoffice``: the ids every existing database records). A new part starts its own branch
(``down_revision = None``, ``branch_labels = ("billing",)``, ``depends_on`` the revisions its
tables refer to), and :meth:`~rabbitry.storage.database.Database.upgrade` goes to every head.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import MetaData

PACKAGE = Path(__file__).resolve().parents[1]
ENVIRONMENT = Path(__file__).with_name("alembic")


def installed_locations() -> tuple[Path, ...]:
    """Every installed part's ``migrations/`` folder, in name order."""
    return tuple(sorted(p for p in PACKAGE.glob("*/migrations") if p.is_dir()))


@dataclass(frozen=True, slots=True)
class Migrations:
    """The version locations to migrate with, and the tables they should produce (for
    ``alembic revision --autogenerate``; not needed to upgrade)."""

    locations: Sequence[Path]
    metadata: MetaData | None = None

    @classmethod
    def installed(cls) -> Migrations:
        return cls(installed_locations())

    def config(self, url: str) -> Config:
        """An Alembic configuration for the database at ``url``."""
        from alembic.config import Config  # imported here: it is slow, and only migrations need it

        config = Config()
        config.set_main_option("script_location", str(ENVIRONMENT))
        config.set_main_option("path_separator", "os")
        config.set_main_option("version_locations", os.pathsep.join(map(str, self.locations)))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        if self.metadata is not None:
            config.attributes["metadata"] = self.metadata
        return config
