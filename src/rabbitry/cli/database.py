"""``rabbitry db upgrade``: the registry's parts' migrations, applied to the SQL database."""

from __future__ import annotations

from typing import Annotated

import typer

from rabbitry.app import registry
from rabbitry.config import Settings
from rabbitry.console import run, settings
from rabbitry.errors import StorageError
from rabbitry.storage import Database

db_app = typer.Typer(help="The SQL database.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[
        str, typer.Option(help="Target revision ('heads': every part's latest).")
    ] = "heads",
) -> None:
    """Apply the database migrations (also done by `rabbitry up`)."""
    config = settings(ctx)
    run(_upgrade(config, revision))
    print(f"database migrated to {revision}")


async def _upgrade(config: Settings, revision: str) -> None:
    async with Database(config.sql_url) as db:
        try:
            await db.upgrade(revision, migrations=registry.migrations())
        except StorageError:
            raise
        except Exception as exc:  # Alembic and the drivers raise their own types
            raise StorageError(f"migration failed: {type(exc).__name__}: {exc}") from exc
