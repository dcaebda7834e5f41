"""The dashboard's readings, taken every ``dashboard_interval`` seconds while the back-office
runs, so that a page opened now shows the last minutes (:class:`~.series.Series`).

Where each figure comes from:

- queue depths, consumers and dead letters, each tenant's DISPATCH lag (its removal queue's
  depth) and the event store's lag (the event-sourcing queue's depth): passive declares, as
  :func:`~.overview.overview` does. The broker's management plugin is not needed (many
  deployments, this project's test machines among them, do not enable it), which is also why
  the broker gives no rates of its own here;
- publish, deliver and ack rates, the relay's work and the chat gateways' sockets and rooms:
  Rabbitry's own Prometheus counters, this process's and those of ``dashboard_metrics_urls``
  (the other processes' ``/metrics``, read with the admin token), summed;
- the outbox: its pending rows by origin (contingency rows are the relay's to re-publish,
  manual ones wait for an operator).

A figure that cannot be read is a line in the reading's ``problems``, never an exception: the
dashboard must show a broken system, not stop drawing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

from rabbitry import metrics
from rabbitry.backoffice.overview import Broker, overview, tenant_names
from rabbitry.backoffice.series import (
    QueueSample,
    Reading,
    Series,
    counter_totals,
    gateway_gauges,
)
from rabbitry.errors import RabbitryError
from rabbitry.events import EventsLayout
from rabbitry.outbox import Origin, Outbox, RequeueFilter
from rabbitry.sessions import TenantsLayout
from rabbitry.storage import Database
from rabbitry.web import AppState

log = logging.getLogger(__name__)

Sample = tuple[str, Mapping[str, str], float]
SCRAPE_TIMEOUT = 3.0
MAX_POINTS = 720  # per series, whatever the window and interval: the document stays small


class Sampler:
    """Takes a :class:`Reading` every interval into :attr:`series`; ``run`` until cancelled."""

    def __init__(self, state: AppState, broker: Broker) -> None:
        settings = state.settings
        self._state = state
        self._broker = broker
        self.interval = settings.dashboard_interval
        points = round(settings.dashboard_window / self.interval)
        self.series = Series(min(MAX_POINTS, max(2, points)))

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT) as http:
            while True:
                started = time.monotonic()
                try:
                    self.series.add(await self.read(http))
                except RabbitryError as exc:  # the broker or the database away: one line
                    log.warning("dashboard reading failed: %s", exc)
                except Exception:  # one bad reading must not end the dashboard's history
                    log.exception("dashboard reading failed")
                await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def read(self, http: httpx.AsyncClient) -> Reading:
        state = self._state
        settings = state.settings
        database = state.database
        if database is None:  # the app's lifespan opens it before the back-office's
            raise RuntimeError("the app's database is not open")
        problems: list[str] = []
        figures = await overview(settings, database, self._broker, state.topology)
        if figures.broker_error:
            problems.append(f"broker: {figures.broker_error}")
        queues = {
            q.name: QueueSample(q.messages, q.consumers, q.dead_letters) for q in figures.queues
        }
        layout = TenantsLayout(settings.namespace)
        tenants = {}
        for tenant in await tenant_names(database):
            lag = queues.get(layout.tenant_queue(tenant))
            if lag is not None and lag.depth is not None:
                tenants[tenant] = lag.depth
        # The event store's lag: what waits in all its partitions.
        events = EventsLayout(settings.namespace)
        partitions = [
            queues.get(events.partition_queue(p)) for p in range(settings.events_partitions)
        ]
        depths = [q.depth for q in partitions if q is not None and q.depth is not None]
        samples = list(_own_samples())
        for url in settings.dashboard_metrics_urls:
            try:
                samples.extend(await _scrape(http, url, state))
            except (httpx.HTTPError, ValueError) as exc:
                problems.append(f"metrics of {url}: {type(exc).__name__}: {exc}"[:300])
        return Reading(
            at=time.time(),
            queues=queues,
            tenants=tenants,
            event_store=sum(depths) if depths else None,
            pending=await _pending(database, problems),
            counters=counter_totals(samples),
            gateways=gateway_gauges(samples),
            problems=tuple(problems),
        )


async def _pending(database: Database, problems: list[str]) -> dict[str, int]:
    outbox = Outbox(database)
    try:
        return {origin.value: await outbox.count(RequeueFilter(origin=origin)) for origin in Origin}
    except RabbitryError as exc:
        problems.append(f"outbox: {exc}")
        return {}


def _own_samples() -> Iterator[Sample]:
    for family in metrics.REGISTRY.collect():
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


async def _scrape(http: httpx.AsyncClient, url: str, state: AppState) -> list[Sample]:
    token = state.settings.admin_token
    headers = {} if token is None else {"Authorization": f"Bearer {token.get_secret_value()}"}
    response = await http.get(url, headers=headers)
    response.raise_for_status()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]
