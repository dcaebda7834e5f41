"""``rabbitry outbox list|show|delete``: the back-office's "Messages to enqueue" in a terminal.

::

    rabbitry outbox list --state pending --queue shipping_registered_publisher
    rabbitry outbox list --from '2024-07-01 00:00:00' --to '2024-07-01 23:59:59' --json
    rabbitry outbox list --after 20240701T100000.000000_41     # the next page
    rabbitry outbox show 42
    rabbitry outbox delete 42 43                                # soft delete
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rabbitry.config import Settings
from rabbitry.console import fail, run, settings
from rabbitry.outbox.filters import FilterError, parse_filter
from rabbitry.outbox.message import OutboxMessage, OutboxQuery, Page, PageKey, State
from rabbitry.outbox.store import MAX_PAGE, Outbox
from rabbitry.storage import Database

NOT_FOUND = 1

outbox_app = typer.Typer(
    help="The outbox's stored messages: list them with filters, show one, soft-delete.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(outbox_app, name="outbox")


@outbox_app.command("list")
def list_command(
    ctx: typer.Context,
    queue: Annotated[str | None, typer.Option(help="Registry queue (publisher) name.")] = None,
    state: Annotated[
        State | None, typer.Option(help="pending, processed or deleted (default: not deleted).")
    ] = None,
    date_from: Annotated[
        str | None, typer.Option("--from", help="'YYYY-MM-DD HH:MM:SS', inclusive.")
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="'YYYY-MM-DD HH:MM:SS', inclusive; needs --from.")
    ] = None,
    after: Annotated[
        str | None, typer.Option(help="Page key printed at the end of the previous page.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_PAGE, help="Rows per page.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
    utc: Annotated[bool, typer.Option("--utc", help="Dates in UTC, not local time.")] = False,
) -> None:
    """List stored messages, newest first, one page at a time."""
    zone = dt.UTC if utc else None
    try:
        where = parse_filter(queue, date_from, date_to, tz=zone)
        key = PageKey.parse(after) if after else None
    except (FilterError, ValueError) as exc:
        fail(str(exc))
    page = run(_list(settings(ctx), OutboxQuery(where, state), key, limit))
    if as_json:
        for entry in page.messages:
            print(json.dumps(_summary(entry), ensure_ascii=False))
    else:
        _table(page, zone)
    if page.next_token:
        print(f"next page: --after {page.next_token}", file=sys.stderr)


@outbox_app.command("show")
def show_command(
    ctx: typer.Context,
    row_id: Annotated[int, typer.Argument(metavar="ID", help="Row id (from `outbox list`).")],
) -> None:
    """Print one stored message as JSON, its body pretty-printed under "payload"."""
    entry = run(_get(settings(ctx), row_id))
    if entry is None:
        fail(f"no stored message #{row_id}", code=NOT_FOUND)
    record = entry.to_json()
    try:
        record["payload"] = json.loads(entry.body)
    except ValueError:
        record["payload"] = None
    print(json.dumps(record, indent=2, ensure_ascii=False))


@outbox_app.command("delete")
def delete_command(
    ctx: typer.Context,
    row_ids: Annotated[list[int], typer.Argument(metavar="ID...", help="Row ids.")],
) -> None:
    """Soft-delete stored messages: never sent again, still listed with --state deleted."""
    deleted = run(_delete(settings(ctx), row_ids))
    for row_id in deleted:
        print(f"deleted #{row_id}")
    missed = sorted(set(row_ids) - set(deleted))
    if missed:
        fail(f"not found or deleted already: {', '.join(f'#{i}' for i in missed)}", NOT_FOUND)


async def _list(config: Settings, query: OutboxQuery, key: PageKey | None, limit: int) -> Page:
    async with Database(config.sql_url) as db:
        await db.upgrade()
        return await Outbox(db).page(query, after=key, limit=limit)


async def _get(config: Settings, row_id: int) -> OutboxMessage | None:
    async with Database(config.sql_url) as db:
        await db.upgrade()
        return await Outbox(db).get(row_id)


async def _delete(config: Settings, row_ids: list[int]) -> list[int]:
    async with Database(config.sql_url) as db:
        await db.upgrade()
        return await Outbox(db).delete(row_ids)


def _summary(entry: OutboxMessage) -> dict[str, object]:
    record = entry.to_json()
    record.pop("headers")
    return record


def _table(page: Page, zone: dt.tzinfo | None) -> None:
    def when(value: dt.datetime | None) -> str:
        return "" if value is None else value.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")

    table = Table(title="outbox")
    for column in ("id", "queue", "type", "state", "origin", "created", "processed", "requeued"):
        table.add_column(column, no_wrap=column in ("id", "created", "processed", "requeued"))
    table.add_column("attempts", justify="right")
    table.add_column("last error")
    for e in page.messages:
        table.add_row(
            str(e.id),
            e.queue,
            e.type,
            f"{e.state} (refused)" if e.refused else str(e.state),
            e.origin,
            when(e.created_at),
            when(e.processed_at),
            when(e.requeued_at),
            str(e.attempts),
            (e.last_error or "")[:80],
        )
    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: no 80-column wrapping
        console = Console(highlight=False, width=250)
    console.print(table)
    if not page.messages:
        print("(no stored message matches)")
