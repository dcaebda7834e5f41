"""Login, the dashboard, the queue registry, an entity's event history, and dead letters."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rabbitry.backoffice.overview import Broker, SystemTopology, overview
from rabbitry.backoffice.web import (
    Ctx,
    context,
    error,
    first,
    operator,
    posted,
    revoked_of,
    static_file,
)
from rabbitry.errors import NotFound, RabbitryError
from rabbitry.events import EventStore, parse_time
from rabbitry.messaging.deadletters import (
    dead_letter_queue,
    list_dead_letters,
    move_dead_letters,
)
from rabbitry.outbox import Outbox, list_queues
from rabbitry.sessions import MemoryLoginThrottle
from rabbitry.storage.listing import int64

log = logging.getLogger(__name__)

DEAD_LETTER_PAGE = 100


def broker_of(ctx: Ctx) -> Broker:
    broker = getattr(ctx.state, "backoffice_broker", None)
    if broker is None:
        broker = ctx.state.backoffice_broker = Broker(ctx.settings)
    assert isinstance(broker, Broker)
    return broker


def throttle_of(ctx: Ctx) -> MemoryLoginThrottle:
    """The process's back-office login throttle: attempts per client address per window."""
    throttle = getattr(ctx.state, "backoffice_throttle", None)
    if throttle is None:
        settings = ctx.settings
        throttle = ctx.state.backoffice_throttle = MemoryLoginThrottle(
            max_failures=settings.login_max_failures,
            lockout=settings.login_lockout,
            per_client=settings.login_max_failures,
        )
    assert isinstance(throttle, MemoryLoginThrottle)
    return throttle


def build(topology: SystemTopology) -> APIRouter:
    """The routers of these pages; ``topology`` gives the system's queues (the app's)."""
    router = APIRouter()

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
    async def login(request: Request) -> Response:
        got = await posted(request, login=True)
        if isinstance(got, Response):
            return got
        ctx, form = got
        client = request.client.host if request.client is not None else ""
        throttle = throttle_of(ctx)
        if not await throttle.attempt("backoffice", client, client):
            log.warning("back-office: login from %s refused: too many attempts", client)
            return ctx.render("login.html", status=429, problem="too many attempts: wait a minute")
        if not ctx.signer.credential_ok(first(form, "token")):
            log.warning("back-office: failed login from %s", client)  # never the secret tried
            return ctx.render("login.html", status=401, problem="wrong admin token")
        await throttle.succeeded("backoffice", client, client)
        ctx.session = ctx.session.logged_in()
        ctx.fresh = True
        return ctx.redirect("/")

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        ctx, _ = got
        revoked_of(request).add(ctx.session)  # the old cookie is worthless from now on
        ctx.session = type(ctx.session).anonymous()
        ctx.fresh = True
        return ctx.redirect("/login")

    @router.get("/")
    async def dashboard(request: Request) -> Response:
        ctx = await operator(request)
        if isinstance(ctx, Response):
            return ctx
        figures = await overview(ctx.settings, ctx.database, broker_of(ctx), topology)
        return ctx.render("dashboard.html", overview=figures)

    @router.get("/queues")
    async def queues(request: Request) -> Response:
        ctx = await operator(request)
        if isinstance(ctx, Response):
            return ctx
        entries = await list_queues(ctx.database)
        pending = await Outbox(ctx.database).pending_by_queue()
        return ctx.render("queues.html", entries=entries, pending=pending)

    @router.get("/events")
    async def events(request: Request) -> Response:
        ctx = await operator(request)
        if isinstance(ctx, Response):
            return ctx
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
            except ValueError as exc:
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

    @router.get("/dead-letters")
    async def dead_letter_queues(request: Request) -> Response:
        ctx = await operator(request)
        if isinstance(ctx, Response):
            return ctx
        figures = await overview(ctx.settings, ctx.database, broker_of(ctx), topology)
        return ctx.render("dead_letter_queues.html", overview=figures)

    @router.get("/dead-letters/{queue}")
    async def dead_letters(request: Request, queue: str) -> Response:
        ctx = await operator(request)
        if isinstance(ctx, Response):
            return ctx
        try:
            dlq = dead_letter_queue(queue)
            declarer = await broker_of(ctx).declarer()
            letters, total = await list_dead_letters(declarer, dlq, limit=DEAD_LETTER_PAGE)
        except ValueError as exc:
            return error(400, str(exc))
        except NotFound:
            return ctx.render("missing.html", status=404, what=f"queue {queue!r}")
        except RabbitryError as exc:
            await broker_of(ctx).forget()
            return ctx.render("missing.html", status=503, what=f"the broker ({exc})")
        return ctx.render("dead_letters.html", queue=dlq, letters=letters, total=total, report=None)

    @router.post("/dead-letters/{queue}/move")
    async def move(request: Request, queue: str) -> Response:
        got = await posted(request)
        if isinstance(got, Response):
            return got
        ctx, form = got
        ids = [v for v in form.get("ids", []) if v and len(v) <= 255]
        every = first(form, "scope") == "all"
        if not every and not ids:
            return error(400, "no dead letter selected")
        try:
            dlq = dead_letter_queue(queue)
            declarer = await broker_of(ctx).declarer()
            report = await move_dead_letters(declarer, ctx.publisher, dlq, None if every else ids)
            letters, total = await list_dead_letters(declarer, dlq, limit=DEAD_LETTER_PAGE)
        except ValueError as exc:
            return error(400, str(exc))
        except NotFound:
            return error(404, f"no queue {queue!r}")
        except RabbitryError as exc:
            await broker_of(ctx).forget()
            return error(503, str(exc))
        return ctx.render(
            "dead_letters.html", queue=dlq, letters=letters, total=total, report=report
        )

    return router
