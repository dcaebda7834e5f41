"""Settings > Messages to enqueue: the outbox messages, their filters, requeue and soft delete.

Every action is one method of :class:`rabbitry.outbox.Outbox` (``rabbitry outbox list|show|
delete``'s too); requeuing is :func:`~rabbitry.outbox.requeue_messages`, the code of
``rabbitry requeue``, run as a job whose progress the page polls.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from rabbitry.backoffice.jobs import Jobs
from rabbitry.backoffice.web import Ctx, error, first, operator, posted
from rabbitry.errors import RabbitryError
from rabbitry.outbox import (
    MAX_SELECTED,
    FilterError,
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

router = APIRouter()
PAGE = 50


def _date(value: str) -> str:
    """A ``datetime-local`` value (``2024-07-01T10:00`` or with seconds) as the requeue
    command's ``YYYY-MM-DD HH:MM:SS``; anything else goes through for the parser to refuse."""
    text = value.strip().replace("T", " ")
    return text + ":00" if len(text) == 16 else text


def _filters(values: Any) -> dict[str, str]:
    return {name: str(values.get(name) or "").strip() for name in ("queue", "state", "from", "to")}


def _query(filters: dict[str, str]) -> OutboxQuery:
    """The page's filters as a listing query; raises FilterError or ValueError."""
    where = parse_filter(filters["queue"], _date(filters["from"]), _date(filters["to"]))
    state = State(filters["state"]) if filters["state"] else None
    return OutboxQuery(where, state)


def jobs_of(ctx: Ctx) -> Jobs:
    jobs = getattr(ctx.state, "backoffice_jobs", None)
    if jobs is None:
        jobs = ctx.state.backoffice_jobs = Jobs()
    assert isinstance(jobs, Jobs)
    return jobs


@router.get("/messages")
async def messages(request: Request) -> Response:
    ctx = await operator(request)
    if isinstance(ctx, Response):
        return ctx
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
    except (FilterError, ValueError) as exc:
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
async def message(request: Request, row_id: Annotated[int, Path(ge=1, le=INT64_MAX)]) -> Response:
    ctx = await operator(request)
    if isinstance(ctx, Response):
        return ctx
    entry = await Outbox(ctx.database).get(row_id)
    if entry is None:
        return ctx.render("missing.html", status=404, what=f"stored message #{row_id}")
    return ctx.render("message.html", entry=entry)


def _ids(form: dict[str, list[str]]) -> list[int]:
    ids = [int(v) for v in form.get("ids", []) if v.isdigit() and len(v) < 19]
    if len(ids) > MAX_SELECTED:
        raise ValueError(f"select at most {MAX_SELECTED} rows")
    return ids


@router.post("/messages/requeue")
async def requeue(request: Request) -> Response:
    got = await posted(request)
    if isinstance(got, Response):
        return got
    ctx, form = got
    if not ctx.settings.rabbit_active:
        return error(409, "rabbit_active is false: the broker is switched off, nothing was sent")
    try:
        if first(form, "scope") == "matching":
            where: RequeueFilter = _query(_filters({k: first(form, k) for k in form})).where
        else:
            where = selected(_ids(form))
    except (FilterError, ValueError) as exc:
        return error(400, str(exc))
    try:
        job = await jobs_of(ctx).start(ctx.settings, ctx.database, where)
    except RabbitryError as exc:
        return error(503, str(exc))
    return ctx.redirect(f"/jobs/{job.id}")


@router.post("/messages/delete")
async def delete(request: Request) -> Response:
    got = await posted(request)
    if isinstance(got, Response):
        return got
    ctx, form = got
    try:
        ids = _ids(form)
    except ValueError as exc:
        return error(400, str(exc))
    if not ids:
        return error(400, "no row selected")
    deleted = await Outbox(ctx.database).delete(ids)
    back = first(form, "back")
    if back.startswith("/messages"):  # only back to a page of ours
        return ctx.redirect(back)
    return ctx.render("deleted.html", deleted=deleted)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str) -> Response:
    ctx = await operator(request)
    if isinstance(ctx, Response):
        return ctx
    job = jobs_of(ctx).get(job_id)
    if job is None:
        return ctx.render("missing.html", status=404, what="requeue run")
    return ctx.render("job.html", job=job)


@router.get("/jobs/{job_id}/progress")
async def job_progress(request: Request, job_id: str) -> Response:
    ctx = await operator(request)
    if isinstance(ctx, Response):
        return ctx
    job = jobs_of(ctx).get(job_id)
    if job is None:
        return error(404, "no such requeue run")
    return ctx.render("_job.html", job=job)
