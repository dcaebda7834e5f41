"""Settings > Messages to enqueue: the outbox messages, their filters, requeue and soft delete.

Every action is one method of :class:`rabbitry.outbox.Outbox` (``rabbitry outbox list|show|
delete``'s too); requeuing is :func:`~rabbitry.outbox.requeue_messages`, the code of
``rabbitry requeue``, run as a job whose progress the page polls.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from rabbitry.backoffice.jobs import Jobs
from rabbitry.backoffice.web import Action, Operator, PageRoute, error, first
from rabbitry.errors import Conflict, Invalid
from rabbitry.outbox import (
    MAX_SELECTED,
    Outbox,
    OutboxQuery,
    Page,
    PageKey,
    RequeueFilter,
    State,
    list_queues,
    parse_filter,
    selected,
)
from rabbitry.storage.listing import INT64_MAX
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


def _query(filters: dict[str, str]) -> OutboxQuery:
    """The page's filters as a listing query; raises :class:`Invalid`."""
    where = parse_filter(filters["queue"], _date(filters["from"]), _date(filters["to"]))
    try:
        state = State(filters["state"]) if filters["state"] else None
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return OutboxQuery(where, state)


@router.get("/messages")
async def messages(request: Request, ctx: Operator) -> Response:
    filters = _filters(request.query_params)
    after = request.query_params.get("after") or ""
    problem = None
    page = Page((), None)
    pending = 0
    try:
        query = _query(filters)
        key = PageKey.parse(after) if after else None
        page = await Outbox(ctx.database).page(query, after=key, limit=PAGE)
        pending = await Outbox(ctx.database).count(query.where)
    except ValueError as exc:  # the filters and the page key: said back on the page
        problem = str(exc)
    queues = await list_queues(ctx.database)
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
async def message(ctx: Operator, row_id: Annotated[int, Path(ge=1, le=INT64_MAX)]) -> Response:
    entry = await Outbox(ctx.database).get(row_id)
    if entry is None:
        return ctx.render("missing.html", status=404, what=f"stored message #{row_id}")
    return ctx.render("message.html", entry=entry)


def _ids(form: dict[str, list[str]]) -> list[int]:
    ids = [int(v) for v in form.get("ids", []) if v.isdigit() and len(v) < 19]
    if len(ids) > MAX_SELECTED:
        raise Invalid(f"select at most {MAX_SELECTED} rows")
    return ids


@router.post("/messages/requeue")
async def requeue(got: Action, jobs: JobsDep) -> Response:
    ctx, form = got.ctx, got.form
    if not ctx.settings.rabbit_active:
        raise Conflict("rabbit_active is false: the broker is switched off, nothing was sent")
    if got.first("scope") == "matching":
        where: RequeueFilter = _query(_filters({k: first(form, k) for k in form})).where
    else:
        where = selected(_ids(form))
    job = await jobs.start(ctx.settings, ctx.database, where)
    return ctx.redirect(f"/jobs/{job.id}")


@router.post("/messages/delete")
async def delete(got: Action) -> Response:
    ctx = got.ctx
    ids = _ids(got.form)
    if not ids:
        raise Invalid("no row selected")
    deleted = await Outbox(ctx.database).delete(ids)
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
