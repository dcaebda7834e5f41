"""Requeue runs started from the back-office, with the progress the page polls.

A run is :func:`rabbitry.outbox.requeue_messages` (the code of ``rabbitry requeue``) in a
task of the serving process; its progress callback counts outcomes as each batch is recorded.
Runs live in the process that started them (a page polls the same process it posted to) and
are forgotten, oldest first, past :data:`KEEP`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from rabbitry.config import Settings
from rabbitry.errors import RabbitryError
from rabbitry.messaging.publisher import Publisher
from rabbitry.outbox import (
    ExchangeCheck,
    Outbox,
    RequeueFilter,
    RowOutcome,
    requeue_messages,
    without_circuit,
)
from rabbitry.storage import Database

log = logging.getLogger(__name__)

KEEP = 50


@dataclass(slots=True)
class Job:
    id: str
    description: str
    total: int
    started_at: dt.datetime
    published: int = 0
    failed: int = 0
    done: bool = False
    error: str | None = None
    errors: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def handled(self) -> int:
        return self.published + self.failed

    @property
    def percent(self) -> int:
        if self.total <= 0:
            return 100 if self.done else 0
        return min(100, round(100 * self.handled / self.total))


class Jobs:
    """The runs of one process."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, Job] = OrderedDict()

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    async def start(self, settings: Settings, db: Database, where: RequeueFilter) -> Job:
        """Count what ``where`` takes, then requeue it in the background."""
        if where.ids is not None:
            total = len(where.ids)
        else:
            total = await Outbox(db).count(where)
        job = Job(secrets.token_hex(8), where.describe(), total, dt.datetime.now(dt.UTC))
        self._jobs[job.id] = job
        while len(self._jobs) > KEEP:
            self._jobs.popitem(last=False)
        job.task = asyncio.create_task(_run(job, settings, db, where))
        return job

    async def close(self) -> None:
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run(job: Job, settings: Settings, db: Database, where: RequeueFilter) -> None:
    def progress(outcomes: Sequence[RowOutcome]) -> None:
        for outcome in outcomes:
            if outcome.error is None:
                job.published += 1
            else:
                job.failed += 1
                if outcome.error in job.errors or len(job.errors) < 10:
                    job.errors[outcome.error] = job.errors.get(outcome.error, 0) + 1

    exchanges = ExchangeCheck(settings)
    try:
        # A publisher of its own, without the circuit breaker (as `rabbitry requeue`): the
        # app's would fail every row as "circuit open" for a while after one blip.
        async with Publisher(
            without_circuit(settings.amqp), name=f"{settings.namespace}-backoffice-requeue"
        ) as publisher:
            await requeue_messages(
                Outbox(db), publisher, where, exchanges=exchanges, progress=progress
            )
    except (RabbitryError, ValueError) as exc:
        job.error = str(exc)
    except Exception as exc:  # a page waits on this job: say it died rather than spin forever
        log.exception("requeue job %s failed", job.id)
        job.error = f"{type(exc).__name__}: {exc}"
    finally:
        await exchanges.close()
        job.total = max(job.total, job.handled)
        job.done = True
