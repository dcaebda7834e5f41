"""``rabbitry dead-letters list|move``: what died in a queue, and sending it back.

::

    rabbitry dead-letters list                                  # the queues holding some
    rabbitry dead-letters list rabbitry.event-sourcing.p0       # or ...event-sourcing.p0.dlq
    rabbitry dead-letters move rabbitry.event-sourcing.p0 5f0c... 9a1e...
    rabbitry dead-letters move rabbitry.event-sourcing.p0 --all
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rabbitry.config import Settings
from rabbitry.console import fail, run, settings
from rabbitry.messaging import Declarer, Publisher
from rabbitry.messaging.deadletters import (
    DeadLetter,
    MoveReport,
    dead_letter_queue,
    list_dead_letters,
    move_dead_letters,
)

dead_letters_app = typer.Typer(
    help="Dead-letter queues: list what died and why, move messages back to their queue.",
    no_args_is_help=True,
)

QueueArg = Annotated[
    str, typer.Argument(metavar="QUEUE", help="A work queue Q (its Q.dlq is read) or Q.dlq.")
]


def register(app: typer.Typer) -> None:
    app.add_typer(dead_letters_app, name="dead-letters")


def _queue(name: str) -> str:
    try:
        return dead_letter_queue(name)
    except ValueError as exc:
        fail(str(exc))


@dead_letters_app.command("list")
def list_command(
    ctx: typer.Context,
    queue: Annotated[
        str | None,
        typer.Argument(
            metavar="[QUEUE]",
            help="A work queue Q (its Q.dlq is read) or Q.dlq; none: every dead-letter queue "
            "that holds messages.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List dead letters with their reason; looking leaves them in the queue.

    Without QUEUE, list the dead-letter queues that hold messages, with how many: the system's
    (its tenants' too) and those of your own work queues named in RABBITRY_WORK_QUEUES (a JSON
    list, or work_queues in rabbitry.yaml), since the broker lists no queues over AMQP.
    """
    if queue is None:
        _list_queues(settings(ctx), as_json)
        return
    dlq = _queue(queue)
    letters, total = run(_list(settings(ctx), dlq, limit))
    if as_json:
        for letter in letters:
            print(json.dumps(letter.to_json(), ensure_ascii=False))
        return
    table = Table(title=f"{dlq}: {total} dead letter(s)")
    for column in ("id", "type", "reason", "back to", "attempts", "body"):
        table.add_column(column, no_wrap=column == "id")
    for d in letters:
        table.add_row(d.id, d.type, d.reason, d.queue, str(d.attempt), d.body[:60])
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=250)
    console.print(table, markup=False)


@dead_letters_app.command("move")
def move_command(
    ctx: typer.Context,
    queue: QueueArg,
    ids: Annotated[
        list[str] | None, typer.Argument(metavar="ID...", help="Ids from `list`.")
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every dead letter there now.")] = False,
) -> None:
    """Move dead letters back to the queue each died in (confirmed, then removed here).

    Exit 0 when all moved, 1 when any could not be (it stays in the dead-letter queue).
    """
    dlq = _queue(queue)
    if every == bool(ids):
        fail("give either --all or the ids of the dead letters to move")
    report = run(_move(settings(ctx), dlq, None if every else list(ids or ())))
    for key in report.moved:
        print(f"moved   {key}")
    for key, error in report.failed.items():
        print(f"failed  {key}: {error}")
    for key in report.not_found:
        print(f"missing {key}")
    print(f"dead-letters: {report.summary()}")
    if report.failed or report.not_found:
        raise typer.Exit(1)


def _list_queues(config: Settings, as_json: bool) -> None:
    from rabbitry.app.probe import dead_letter_depths

    depths = run(dead_letter_depths(config))
    if as_json:
        for dlq, messages in depths:
            print(json.dumps({"queue": dlq, "dead_letters": messages}))
        return
    if not depths:
        print("no dead letters (in the system's queues and RABBITRY_WORK_QUEUES')")
        return
    table = Table(title="dead-letter queues holding messages")
    table.add_column("queue")
    table.add_column("dead letters", justify="right")
    for dlq, messages in depths:
        table.add_row(dlq, str(messages))
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=250)
    console.print(table, markup=False)
    print(f"see one: rabbitry dead-letters list {depths[0][0]}")


async def _list(config: Settings, dlq: str, limit: int) -> tuple[list[DeadLetter], int]:
    async with await _declarer(config) as declarer:
        return await list_dead_letters(declarer, dlq, limit=limit)


async def _move(config: Settings, dlq: str, ids: list[str] | None) -> MoveReport:
    async with (
        await _declarer(config) as declarer,
        Publisher(config.amqp, name=f"{config.namespace}-dead-letters") as publisher,
    ):
        return await move_dead_letters(declarer, publisher, dlq, ids)


async def _declarer(config: Settings) -> Declarer:
    amqp = config.amqp
    return await Declarer.connect(
        amqp.url, timeout=amqp.connect_timeout, name=f"{config.namespace}-dead-letters"
    )
