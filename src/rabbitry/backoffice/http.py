"""The back-office's router (``/backoffice/``) and its per-process resources.

``router`` is what the registry of parts serves (``rabbitry serve backoffice``, and ``rabbitry
up``). The dashboard lists the whole system's queues from the app's state
(:attr:`rabbitry.web.AppState.topology`), and the entity pages are the parts' registry entries'
(:attr:`rabbitry.web.AppState.entity_pages`), so the back-office never imports the app.
``lifespan`` keeps the requeue runs, the dashboard's broker connection and its sampler (the
charts' last minutes) of the process, and stops and closes them when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from rabbitry.backoffice import deadletter_pages, entity_pages, ledger_pages, system_pages
from rabbitry.backoffice.jobs import Jobs
from rabbitry.backoffice.overview import Broker
from rabbitry.backoffice.sampler import Sampler
from rabbitry.backoffice.web import PREFIX
from rabbitry.web import AppState

router = APIRouter(prefix=PREFIX, tags=["backoffice"], include_in_schema=False)
router.include_router(system_pages.router)
router.include_router(ledger_pages.router)
router.include_router(entity_pages.router)
router.include_router(deadletter_pages.router)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = AppState.of(app)
    jobs, broker = Jobs(), Broker(state.settings)
    sampler = Sampler(state, broker)
    state.put(Jobs, jobs)
    state.put(Broker, broker)
    state.put(Sampler, sampler)
    sampling = asyncio.create_task(sampler.run(), name="backoffice-dashboard-sampler")
    try:
        yield
    finally:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        await jobs.close()
        await broker.forget()
