"""Login, the dashboard, the queue registry and an entity's event history."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from rabbitry.backoffice.overview import Broker, overview
from rabbitry.backoffice.web import (
    Operator,
    PageRoute,
    Posted,
    context,
    login_form,
    posted,
    static_file,
)
from rabbitry.events.change import parse_time
from rabbitry.events.store import EventStore
from rabbitry.outbox import registry
from rabbitry.outbox.ledger import Ledger
from rabbitry.web import resource

router = APIRouter(route_class=PageRoute)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    return static_file(name)


@router.get("/login")
async def login_page(request: Request) -> Response:
    ctx = context(request)
    if ctx.session.auth:
        return ctx.redirect("/")
    return ctx.render("login.html", problem=None)


@router.post("/login")
async def login(got: Posted = Depends(login_form)) -> Response:
    ctx = got.ctx
    if not ctx.signer.credential_ok(got.first("token")):
        return ctx.render("login.html", status=401, problem="wrong admin token")
    ctx.session = ctx.session.logged_in()
    ctx.fresh = True
    return ctx.redirect("/")


@router.post("/logout")
async def logout(got: Posted = Depends(posted)) -> Response:
    ctx = got.ctx
    ctx.session = type(ctx.session).anonymous()
    ctx.fresh = True
    return ctx.redirect("/login")


@router.get("/")
async def dashboard(ctx: Operator, broker: Broker = Depends(resource(Broker))) -> Response:
    figures = await overview(ctx.settings, ctx.database, broker, ctx.app.topology)
    return ctx.render("dashboard.html", overview=figures)


@router.get("/queues")
async def queues(ctx: Operator) -> Response:
    entries = await registry.list_queues(ctx.database)
    pending = await Ledger(ctx.database).pending_by_queue()
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
            entity_id = int(raw_id)
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
