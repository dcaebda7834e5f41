"""Login, the dashboard, the queue registry and an entity's event history."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from rabbitry.backoffice.overview import Broker, overview
from rabbitry.backoffice.sampler import Sampler
from rabbitry.backoffice.web import (
    Operator,
    PageRoute,
    Posted,
    context,
    error,
    login_form,
    logouts_of,
    posted,
    static_file,
)
from rabbitry.events import EventStore, parse_time
from rabbitry.outbox import Outbox, list_queues
from rabbitry.sessions import MemoryLoginThrottle
from rabbitry.storage.listing import int64
from rabbitry.web import AppState, app_state, resource

log = logging.getLogger(__name__)

router = APIRouter(route_class=PageRoute)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return static_file(name)


def throttle_of(state: AppState) -> MemoryLoginThrottle:
    """The process's back-office login throttle: attempts per client address per window."""
    throttle = state.find(MemoryLoginThrottle)
    if throttle is None:
        settings = state.settings
        throttle = MemoryLoginThrottle(
            max_failures=settings.login_max_failures,
            lockout=settings.login_lockout,
            per_client=settings.login_max_failures,
        )
        state.put(MemoryLoginThrottle, throttle)
    return throttle


@router.get("/login")
async def login_page(request: Request) -> Response:
    ctx = await context(request)
    if ctx.session.auth:
        return ctx.redirect("/")
    return ctx.render("login.html", problem=None)


@router.post("/login")
async def login(request: Request, got: Posted = Depends(login_form)) -> Response:
    ctx = got.ctx
    client = request.client.host if request.client is not None else ""
    throttle = throttle_of(app_state(request))
    if not await throttle.attempt("backoffice", client, client):
        log.warning("back-office: login from %s refused: too many attempts", client)
        return ctx.render("login.html", status=429, problem="too many attempts: wait a minute")
    if not ctx.signer.credential_ok(got.first("token")):
        log.warning("back-office: failed login from %s", client)  # never the secret tried
        return ctx.render("login.html", status=401, problem="wrong admin token")
    await throttle.succeeded("backoffice", client, client)
    ctx.session = ctx.session.logged_in()
    ctx.fresh = True
    return ctx.redirect("/")


@router.post("/logout")
async def logout(request: Request, got: Posted = Depends(posted)) -> Response:
    ctx = got.ctx
    await logouts_of(request).add(ctx.session)  # a copy of the cookie is worthless now, everywhere
    ctx.session = type(ctx.session).anonymous()
    ctx.fresh = True
    return ctx.redirect("/login")


@router.get("/")
async def dashboard(ctx: Operator, broker: Broker = Depends(resource(Broker))) -> Response:
    figures = await overview(ctx.settings, ctx.database, broker, ctx.app.topology)
    return ctx.render("dashboard.html", overview=figures)


@router.get("/dashboard.json")
async def dashboard_series(
    request: Request, sampler: Sampler = Depends(resource(Sampler))
) -> Response:
    """The charts' data: the sampler's last minutes (bounded by ``dashboard_window``). A poll
    without a session gets a JSON 401 (the page goes to the login), not the login page."""
    ctx = await context(request)
    if not ctx.session.auth:
        return error(401, "log in to the back-office")
    return ctx.finish(JSONResponse(sampler.series.document(sampler.interval)))


@router.get("/queues")
async def queues(ctx: Operator) -> Response:
    entries = await list_queues(ctx.database)
    pending = await Outbox(ctx.database).pending_by_queue()
    return ctx.render("queues.html", entries=entries, pending=pending)


@router.get("/events")
async def events(request: Request, ctx: Operator) -> Response:
    params = request.query_params
    entity = (params.get("entity") or "").strip()
    raw_id = (params.get("id") or "").strip()
    at = (params.get("at") or "").strip()
    history, state, problem = [], None, None
    if entity and raw_id:
        try:
            entity_id = int64(raw_id)
            if entity_id is None:
                raise ValueError(f"an entity id is an integer of 64 bits, not {raw_id[:30]!r}")
            when = parse_time(at) if at else None
        except ValueError as exc:  # int() and parse_time: a form value to say back, on the page
            problem = str(exc)
        else:
            store = EventStore(ctx.database)
            history = await store.history(entity, entity_id)
            state = await store.state(entity, entity_id, when)
            if not history:
                problem = f"no events for {entity} {entity_id}"
    return ctx.render(
        "events.html",
        status=400 if problem and entity and raw_id and not history else 200,
        entity=entity,
        entity_id=raw_id,
        at=at,
        history=history,
        state=state,
        problem=problem,
    )
