"""``rabbitry requeue [QUEUE] [FROM] [TO]``: re-send what the outbox stored.

The command parses its arguments, runs :func:`~rabbitry.outbox.requeue.requeue` and prints a
summary. What it adds is an operator's process around the run:

* SIGTERM and SIGINT stop it the way it should stop: the batch being published is finished and
  marked, the batches leased ahead are given back, the summary is printed, and it exits
  ``128 + signal`` (143, 130). A second signal stops it at once (the batch in flight may then
  be sent again by a later run).
* Its publisher has no circuit breaker, and it waits up to ``--wait`` seconds for a broker that
  went away mid-run before it stops, leaving the remaining rows untouched, or that nacks (a
  quorum queue electing a leader) before it records those rows failed; each wait is logged.
* Exit codes: 0 all published; 1 some failed (or the run stopped early); 2 bad arguments; 3
  nothing failed but rows were skipped because another run holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rabbitry.config import Settings
from rabbitry.console import fail, run, settings, text
from rabbitry.messaging.publisher import Publisher
from rabbitry.outbox import registry
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.filters import FilterError, RequeueFilter, parse_filter
from rabbitry.outbox.report import RequeueReport, RowOutcome
from rabbitry.outbox.requeue import RequeueOptions, requeue, without_circuit
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

FAILED = 1
SKIPPED = 3


@dataclass(slots=True)
class RunResult:
    report: RequeueReport | None  # None: stopped at once by a second signal
    signal: signal.Signals | None = None


def requeue_command(
    ctx: typer.Context,
    queue: Annotated[
        str | None,
        typer.Argument(metavar="QUEUE", help="Registry queue (publisher) name; '' for any."),
    ] = None,
    date_from: Annotated[
        str | None,
        typer.Argument(metavar="FROM", help="'YYYY-MM-DD HH:MM:SS', inclusive; '' for none."),
    ] = None,
    date_to: Annotated[
        str | None,
        typer.Argument(metavar="TO", help="'YYYY-MM-DD HH:MM:SS', inclusive; needs FROM."),
    ] = None,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="List every row.")
    ] = 0,
    utc: Annotated[
        bool, typer.Option("--utc", help="FROM/TO and listed times in UTC, not local time.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, max=10_000, help="Rows per batch.")
    ] = 500,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            min=0,
            max=3600,
            help="Seconds to wait, in all, for a broker that goes away or nacks mid-run.",
        ),
    ] = 30.0,
) -> None:
    """Publish pending outbox rows again (oldest first), marking each once confirmed.

    A row the broker did not confirm stays pending with its error, for a later run.
    Exit 0 when all were published, 1 when any failed or the run stopped early, 2 on bad
    arguments, 3 when rows were skipped because another run holds them; after SIGTERM or
    SIGINT (the batch in flight finished and marked), 143 or 130.

    Example: rabbitry requeue my_publisher '2024-07-01 00:00:00' '2024-07-01 23:59:59' -v
    """
    zone = dt.UTC if utc else None
    for value, what in ((queue, "QUEUE"), (date_from, "FROM"), (date_to, "TO")):
        if value is not None:
            text(value, what)
    try:
        where = parse_filter(queue, date_from, date_to, tz=zone)
    except FilterError as exc:
        fail(str(exc))
    config = settings(ctx)
    if not config.rabbit_active:
        fail("rabbit_active is false: the broker is switched off, nothing was sent", code=1)
    options = RequeueOptions(batch_size=batch_size, broker_wait=wait)
    outcome = run(_main(config, where, verbose=verbose > 0, zone=zone, options=options))
    report = outcome.report
    if report is None:
        print("requeue: stopped at once by a second signal; the batch in flight may be sent again")
    else:
        print(f"requeue: {report.summary()}")
        for error, count in sorted(report.errors.items(), key=lambda item: -item[1])[:5]:
            print(f"  {count} x {error}")
    if outcome.signal is not None:
        print(f"requeue: interrupted by {outcome.signal.name}", file=sys.stderr)
        raise typer.Exit(128 + outcome.signal.value)
    assert report is not None
    if not report.ok or report.stopped is not None:
        raise typer.Exit(FAILED)
    if report.skipped:
        raise typer.Exit(SKIPPED)


async def _main(
    config: Settings,
    where: RequeueFilter,
    *,
    verbose: bool,
    zone: dt.tzinfo | None,
    options: RequeueOptions,
) -> RunResult:
    stopping = asyncio.Event()
    caught: list[signal.Signals] = []
    work = asyncio.ensure_future(_requeue(config, where, verbose, zone, options, stopping))

    def on_signal(received: signal.Signals) -> None:
        if caught:
            work.cancel()  # the second one: now
        caught.append(received)
        stopping.set()

    with _handling(on_signal):
        try:
            report: RequeueReport | None = await work
        except asyncio.CancelledError:
            if not caught:
                raise
            report = None
    return RunResult(report, caught[0] if caught else None)


@contextlib.contextmanager
def _handling(handler: Callable[[signal.Signals], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for number in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(number, handler, number)
        except (RuntimeError, ValueError):
            break  # not the main thread (the command run from a test or another program)
        installed.append(number)
    try:
        yield
    finally:
        for number in installed:
            loop.remove_signal_handler(number)


async def _requeue(
    config: Settings,
    where: RequeueFilter,
    verbose: bool,
    zone: dt.tzinfo | None,
    options: RequeueOptions,
    stopping: asyncio.Event,
) -> RequeueReport:
    console = Console(stderr=True)
    async with (
        Database(config.sql_url) as db,
        # No circuit breaker: the run itself tells a broker that is down from rows that fail.
        Publisher(without_circuit(config.amqp), name=f"{config.namespace}-requeue") as pub,
    ):
        await db.upgrade()  # a fresh database gets its tables, as with every other command
        outbox = Outbox(db)
        total = await outbox.count(where)
        if total == 0 and where.queue:
            note = await _nothing_pending(db, outbox, where)
            if note:
                print(f"note: {note}", file=sys.stderr)  # one line, never wrapped
        out = Console(highlight=False, soft_wrap=True)
        exchanges = ExchangeCheck(config)
        with Progress(
            TextColumn("requeue"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        ) as progress:
            task = progress.add_task("requeue", total=total)

            def show(outcomes: Sequence[RowOutcome]) -> None:
                progress.advance(task, len(outcomes))
                if verbose:
                    for outcome in outcomes:
                        out.print(_describe(outcome, zone), markup=False)

            try:
                return await requeue(
                    outbox,
                    pub,
                    where,
                    options=options,
                    progress=show,
                    stopping=stopping,
                    exchanges=exchanges,
                )
            finally:
                await exchanges.close()


async def _nothing_pending(db: Database, outbox: Outbox, where: RequeueFilter) -> str | None:
    """Why a run for ``where.queue`` found nothing, when that may surprise the user."""
    assert where.queue is not None
    if where.since is not None or where.before is not None:
        outside = await outbox.count(RequeueFilter(queue=where.queue, origin=where.origin))
        if outside:
            return (
                f"{where.queue!r} has no pending rows between FROM and TO, "
                f"but {outside} outside that window"
            )
    if await registry.get_queue(db, where.queue) is None:
        return f"{where.queue!r} is not in the registry and has no pending rows"
    return None


def _describe(outcome: RowOutcome, zone: dt.tzinfo | None) -> str:
    row = outcome.row
    when = row.created_at.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")
    status = "published" if outcome.published else "failed"
    line = f"{status:<9} #{row.id} {row.queue} {when} {row.message_id}"
    return line if outcome.published else f"{line} {outcome.error}"
