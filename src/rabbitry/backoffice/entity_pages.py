"""The entity pages (each part's lists: tenants, users, rooms, entities…) and their ▶ action.

▶ opens a modal listing the registry queues whose classname is the row's and that allow manual
insertion, and no others (:func:`rabbitry.outbox.manual_queues`). Choosing one sends
the row's record through :func:`rabbitry.outbox.manual.send_manually`: with
``manual_processing_mode=rabbit`` it is published now (the outbox keeps it if the broker cannot
take it), with ``db`` it is stored with origin ``manual`` for the requeue command. The modal
says which happened.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rabbitry.backoffice.records import message_for
from rabbitry.backoffice.web import Action, Operator, PageError, PageRoute
from rabbitry.config import ManualProcessingMode
from rabbitry.errors import BrokerError, NotFound, StorageError
from rabbitry.messaging.publisher import PublishStatus
from rabbitry.outbox import get_queue, manual_queues, send_manually
from rabbitry.storage.listing import EntityPages
from rabbitry.web import app_state

router = APIRouter(route_class=PageRoute)
PAGE = 50


def _pages(request: Request) -> Mapping[str, EntityPages]:
    """The parts' entity pages, by kind (their registry entries', on the app's state)."""
    return app_state(request).pages()


def _source(request: Request, kind: str) -> EntityPages | None:
    return _pages(request).get(kind)


@router.get("/entities/{kind}")
async def entities(request: Request, ctx: Operator, kind: str) -> Response:
    source = _source(request, kind)
    if source is None:
        return ctx.render("missing.html", status=404, what=f"entity page {kind!r}")
    params = request.query_params
    search = (params.get("q") or "").strip()
    tenant = (params.get("tenant") or "").strip()
    after = params.get("after") or None
    listing = await source.page(ctx.database, search, tenant, after, PAGE)
    return ctx.render(
        "entities.html",
        source=source,
        sources=_pages(request),
        listing=listing,
        search=search,
        tenant=tenant,
        after=after or "",
    )


@router.get("/send")
async def send_dialog(request: Request, ctx: Operator) -> Response:
    kind, key = request.query_params.get("kind", ""), request.query_params.get("key", "")
    source = _source(request, kind)
    record = await source.record(ctx.database, key) if source is not None else None
    if record is None:
        return ctx.render("missing.html", status=404, what=f"{kind} {key!r}")
    queues = await manual_queues(ctx.database, record.classname)
    fragment = bool(request.headers.get("hx-request"))
    return ctx.render(
        "_send.html" if fragment else "send.html", record=record, queues=queues, result=None
    )


@router.post("/send")
async def send(request: Request, got: Action) -> Response:
    ctx = got.ctx
    kind, key, queue = got.first("kind"), got.first("key"), got.first("queue")
    source = _source(request, kind)
    record = await source.record(ctx.database, key) if source is not None else None
    if record is None:
        raise NotFound(f"no {kind} {key!r}")
    entry = await get_queue(ctx.database, queue)
    if entry is None or entry.classname != record.classname:
        # Only what the modal offered: a queue of this classname.
        raise NotFound(f"queue {queue!r} takes no {record.classname}")
    # A RecordError (400) or ManualInsertionRefused (403) goes to PageRoute as it is; only a
    # failure to send says what became of the message.
    message, routing_key = message_for(entry, record)
    try:
        result = await send_manually(
            ctx.settings,
            ctx.database,
            ctx.publisher,
            entry.name,
            message,
            routing_key=routing_key,
        )
    except (BrokerError, StorageError) as exc:
        raise PageError(503, f"not sent, not stored: {exc}") from exc
    if result.status is PublishStatus.PUBLISHED:
        outcome = "published"
    elif ctx.settings.manual_processing_mode is ManualProcessingMode.DB:
        outcome = "stored"
    elif result.status is PublishStatus.PERSISTED:
        outcome = "outboxed"
    else:
        outcome = "failed"
    queues = await manual_queues(ctx.database, record.classname)
    fragment = bool(request.headers.get("hx-request"))
    return ctx.render(
        "_send.html" if fragment else "send.html",
        record=record,
        queues=queues,
        result={"outcome": outcome, "queue": entry.name, "id": message.id, "error": result.error},
        status=200 if outcome != "failed" else 502,
    )
