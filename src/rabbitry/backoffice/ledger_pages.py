"""Settings > Messages to enqueue: the outbox ledger, its filters, requeue and soft delete.

Every action is one function of :mod:`rabbitry.outbox.browse` (``rabbitry outbox list|show|
delete``'s too); requeuing is :func:`~rabbitry.outbox.browse.requeue_messages`, the code of
``rabbitry requeue``, run as a job whose progress the page polls.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from rabbitry.backoffice.jobs import Jobs
from rabbitry.backoffice.web import Action, Operator, PageRoute, error, first
from rabbitry.errors import Conflict, Invalid
from rabbitry.outbox import browse, registry
from rabbitry.outbox.browse import LedgerQuery, PageKey, State
from rabbitry.outbox.filters import RequeueFilter, parse_filter
from rabbitry.web import resource

router = APIRouter(route_class=PageRoute)
PAGE = 50

JobsDep = Annotated[Jobs, Depends(resource(Jobs))]


def _date(value: str) -> str:
    """A ``datetime-local`` value (``2024-07-01T10:00`` or with seconds) as the requeue
    command's ``YYYY-MM-DD HH:MM:SS``; anything else goes through for the parser to refuse."""
    text = value.strip().replace("T", " ")
    return text + ":00" if len(text) == 16 else text


def _filters(values: Any) -> dict[str, str]:
    return {name: str(values.get(name) or "").strip() for name in ("queue", "state", "from", "to")}


def _query(filters: dict[str, str]) -> LedgerQuery:
    """The page's filters as a listing query; raises :class:`Invalid`."""
    where = parse_filter(filters["queue"], _date(filters["from"]), _date(filters["to"]))
    try:
        state = State(filters["state"]) if filters["state"] else None
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return LedgerQuery(where, state)


@router.get("/messages")
async def messages(request: Request, ctx: Operator) -> Response:
    filters = _filters(request.query_params)
    after = request.query_params.get("after") or ""
    problem = None
    page = browse.Page((), None)
    pending = 0
    try:
        query = _query(filters)
        key = PageKey.parse(after) if after else None
        page = await browse.list_messages(ctx.database, query, after=key, limit=PAGE)
        pending = await browse.pending_count(ctx.database, query.where)
    except ValueError as exc:  # the filters and the page key: said back on the page
        problem = str(exc)
    queues = await registry.list_queues(ctx.database)
    return ctx.render(
        "messages.html",
        status=400 if problem else 200,
        page=page,
        filters=filters,
        after=after,
        problem=problem,
        pending=pending,
        queues=queues,
        states=[str(s) for s in State],
    )


@router.get("/messages/{row_id}")
async def message(ctx: Operator, row_id: int) -> Response:
    entry = await browse.get_message(ctx.database, row_id)
    if entry is None:
        return ctx.render("missing.html", status=404, what=f"stored message #{row_id}")
    return ctx.render("message.html", entry=entry)


def _ids(form: dict[str, list[str]]) -> list[int]:
    ids = [int(v) for v in form.get("ids", []) if v.isdigit() and len(v) < 19]
    if len(ids) > browse.MAX_SELECTED:
        raise Invalid(f"select at most {browse.MAX_SELECTED} rows")
    return ids


@router.post("/messages/requeue")
async def requeue(got: Action, jobs: JobsDep) -> Response:
    ctx, form = got.ctx, got.form
    if not ctx.settings.rabbit_active:
        raise Conflict("rabbit_active is false: the broker is switched off, nothing was sent")
    if got.first("scope") == "matching":
        where: RequeueFilter = _query(_filters({k: first(form, k) for k in form})).where
    else:
        where = browse.selected(_ids(form))
    job = await jobs.start(ctx.settings, ctx.database, ctx.publisher, where)
    return ctx.redirect(f"/jobs/{job.id}")


@router.post("/messages/delete")
async def delete(got: Action) -> Response:
    ctx = got.ctx
    ids = _ids(got.form)
    if not ids:
        raise Invalid("no row selected")
    deleted = await browse.delete_messages(ctx.database, ids)
    back = got.first("back")
    if back.startswith("/messages"):  # only back to a page of ours
        return ctx.redirect(back)
    return ctx.render("deleted.html", deleted=deleted)


@router.get("/jobs/{job_id}")
async def job_page(ctx: Operator, jobs: JobsDep, job_id: str) -> Response:
    job = jobs.get(job_id)
    if job is None:
        return ctx.render("missing.html", status=404, what="requeue run")
    return ctx.render("job.html", job=job)


@router.get("/jobs/{job_id}/progress")
async def job_progress(ctx: Operator, jobs: JobsDep, job_id: str) -> Response:
    job = jobs.get(job_id)
    if job is None:
        return error(404, "no such requeue run")
    return ctx.render("_job.html", job=job)
