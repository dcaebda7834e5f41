"""``rabbitry requeue`` (:mod:`.requeue_commands`), ``rabbitry outbox list|show|delete``
(:mod:`.message_commands`) and ``rabbitry queues sync|list``.

``requeue`` re-sends what the outbox stored::

    rabbitry requeue                                  # every pending row
    rabbitry requeue shipping_registered_publisher    # one queue
    rabbitry requeue '' '2024-07-01 00:00:00'         # any queue, from a date
    rabbitry requeue q '2024-07-01 00:00:00' '2024-07-01 23:59:59' -v
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rabbitry.config import Settings
from rabbitry.console import fail, run, settings
from rabbitry.errors import StorageError
from rabbitry.outbox import message_commands, registry, requeue_commands
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

queues_app = typer.Typer(
    help="The queue registry: which queues exist, what they are for, who may send to them.",
    no_args_is_help=True,
)


def _schema_hint(exc: StorageError) -> StorageError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else "database error"
    return StorageError(f"{first} (is the schema there? run `rabbitry db upgrade`)")


def register(app: typer.Typer) -> None:
    app.command("requeue")(requeue_commands.requeue_command)
    app.add_typer(queues_app, name="queues")
    message_commands.register(app)


# --- queues -------------------------------------------------------------------------------


@queues_app.command("sync")
def queues_sync(ctx: typer.Context) -> None:
    """Load the queue registry from rabbitry.yaml (`queues:`).

    Upsert by name; an entry no longer in the file becomes inactive and keeps its history.
    Applies the database migrations first.
    """
    config = settings(ctx)
    if config.config_file is None:
        fail("no rabbitry.yaml found (give one with --config): nothing to sync from")
    try:
        report = run(_sync(config))
    except ValueError as exc:
        fail(str(exc))
    print(f"queues: {report.summary()}")
    for label, names in (
        ("created", report.created),
        ("updated", report.updated),
        ("deactivated", report.deactivated),
    ):
        for name in names:
            print(f"  {label:<11} {name}")


async def _sync(config: Settings) -> registry.SyncReport:
    async with Database(config.sql_url) as db:
        await db.upgrade()
        return await registry.sync(db, config.queues)


@queues_app.command("list")
def queues_list(
    ctx: typer.Context,
    active_only: Annotated[bool, typer.Option("--active", help="Hide inactive entries.")] = False,
) -> None:
    """Print the registry as a table, with each queue's pending messages."""
    rows, pending = run(_list(settings(ctx), active_only))
    table = Table(title="queue registry")
    table.add_column("name", no_wrap=True)
    for column in ("description", "manual", "classname", "exchange", "routing key"):
        table.add_column(column)
    table.add_column("active")
    table.add_column("pending", justify="right")
    for q in rows:
        table.add_row(
            q.name,
            q.description,
            "yes" if q.allow_manual_insertion else "no",
            q.classname,
            q.exchange,
            q.routing_key,
            "yes" if q.active else "no",
            str(pending.get(q.name, 0)),
        )
    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: no 80-column wrapping of names
        console = Console(highlight=False, width=250)
    console.print(table)
    if not rows:
        print("(empty: add `queues:` to rabbitry.yaml and run `rabbitry queues sync`)")


async def _list(
    config: Settings, active_only: bool
) -> tuple[list[registry.QueueInfo], dict[str, int]]:
    async with Database(config.sql_url) as db:
        await db.upgrade()
        try:
            rows = await registry.list_queues(db, include_inactive=not active_only)
            pending = await Outbox(db).pending_by_queue()
        except StorageError as exc:
            raise _schema_hint(exc) from exc
    return rows, pending
