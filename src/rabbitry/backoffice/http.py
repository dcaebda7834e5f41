"""The back-office's router (``/backoffice/``) and its per-process resources.

``build(topology)`` is what the registry of parts serves (``rabbitry serve backoffice``, and
``rabbitry up``); ``topology`` is the app's system topology, so that the dashboard lists every
part's queues without the back-office importing the app. ``lifespan`` stops requeue runs still
going and closes the dashboard's broker connection when the process stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from rabbitry.backoffice import entity_pages, ledger_pages, system_pages
from rabbitry.backoffice.jobs import Jobs
from rabbitry.backoffice.overview import Broker, SystemTopology
from rabbitry.backoffice.web import PREFIX


def build(topology: SystemTopology) -> APIRouter:
    router = APIRouter(prefix=PREFIX, tags=["backoffice"], include_in_schema=False)
    router.include_router(system_pages.build(topology))
    router.include_router(ledger_pages.router)
    router.include_router(entity_pages.router)
    return router


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    state.backoffice_jobs = Jobs()
    state.backoffice_broker = Broker(state.settings)
    try:
        yield
    finally:
        await state.backoffice_jobs.close()
        await state.backoffice_broker.forget()
