"""The relay: re-publishes contingency rows by itself once the broker is back.

Every ``interval`` seconds it runs the requeue over contingency rows (manual ones wait for a
user's ``rabbitry requeue``), through the same code path as the command. It differs in two
ways: it leaves recently failed rows alone for a back-off (so one poison row cannot hog it),
and it ends a pass at the first batch that wholly failed (the broker is most likely still
down; the next pass probes again), leaving that batch untouched when the broker is indeed
unreachable, so an outage does not count against the rows. With ``rabbit_active=false`` it has
nothing to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rabbitry.config import Settings
from rabbitry.errors import RabbitryError
from rabbitry.messaging.publisher import Publisher
from rabbitry.messaging.tracing import tracing_middleware
from rabbitry.metrics import RELAY_FAILED, RELAYED
from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.filters import Origin, RequeueFilter
from rabbitry.outbox.report import RequeueReport
from rabbitry.outbox.requeue import RequeueOptions, requeue, without_circuit
from rabbitry.outbox.store import Outbox
from rabbitry.storage import Database

log = logging.getLogger(__name__)


class RelayService:
    """A :class:`rabbitry.messaging.service.Service` named ``relay``."""

    name = "relay"

    def __init__(
        self,
        settings: Settings,
        *,
        interval: float = 5.0,
        batch_size: int = 500,
        db: Database | None = None,
    ) -> None:
        self.settings = settings
        self.interval = interval
        self.options = RequeueOptions(
            batch_size=batch_size, respect_backoff=True, stop_on_failed_batch=True, broker_wait=0
        )
        self._db = db
        self.passes = 0
        self.published = 0

    async def run(self, stopping: asyncio.Event) -> None:
        if not self.settings.rabbit_active:
            log.warning("relay idle: rabbit_active is false, rows wait for `rabbitry requeue`")
            await stopping.wait()
            return
        async with contextlib.AsyncExitStack() as stack:
            db = self._db
            if db is None:
                db = await stack.enter_async_context(Database(self.settings.sql_url))
            publisher = await stack.enter_async_context(
                Publisher(
                    without_circuit(self.settings.amqp),
                    name=f"{self.settings.namespace}-relay",
                    # Traced, a stored message's send joins the trace it was published in.
                    middleware=tracing_middleware(),
                )
            )
            exchanges = ExchangeCheck(self.settings)
            stack.push_async_callback(exchanges.close)
            outbox = Outbox(db)
            while not stopping.is_set():
                exchanges.forget()
                await self.run_once(outbox, publisher, stopping, exchanges)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=self.interval)

    async def run_once(
        self,
        outbox: Outbox,
        publisher: Publisher,
        stopping: asyncio.Event | None = None,
        exchanges: ExchangeCheck | None = None,
    ) -> RequeueReport | None:
        """One pass; errors are logged, never raised (the next pass tries again)."""
        self.passes += 1
        try:
            report = await requeue(
                outbox,
                publisher,
                RequeueFilter(origin=Origin.CONTINGENCY),
                options=self.options,
                stopping=stopping,
                exchanges=exchanges,
            )
        except RabbitryError as exc:
            log.warning("relay pass failed: %s", exc)
            return None
        self.published += report.published
        # The dashboard charts these: what the relay is doing, beside what waits for it.
        RELAYED.inc(report.published)
        RELAY_FAILED.inc(report.failed)
        if report.published or report.failed:
            log.info("relay: %s", report.summary())
        return report
