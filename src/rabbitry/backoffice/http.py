"""The back-office's router (``/backoffice/``) and its per-process resources.

``build(topology, pages)`` is what the registry of parts serves (``rabbitry serve
backoffice``, and ``rabbitry up``); ``topology`` is the app's system topology, so that the
dashboard lists every part's queues, and ``pages`` the parts' entity pages (their
registry entries'), without the back-office importing the app or naming a part. ``lifespan``
stops requeue runs still going and closes the dashboard's broker connection when the process
stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request

from rabbitry.backoffice import entity_pages, ledger_pages, system_pages
from rabbitry.backoffice.jobs import Jobs
from rabbitry.backoffice.overview import Broker, SystemTopology
from rabbitry.backoffice.web import PREFIX
from rabbitry.storage.listing import EntityPages


def build(topology: SystemTopology, pages: Sequence[EntityPages] = ()) -> APIRouter:
    by_kind = {page.kind: page for page in pages}

    def offer_pages(request: Request) -> None:
        request.state.entity_pages = by_kind

    router = APIRouter(
        prefix=PREFIX,
        tags=["backoffice"],
        include_in_schema=False,
        dependencies=[Depends(offer_pages)],
    )
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
