"""The FastAPI app that ``rabbitry up`` and ``rabbitry serve NAME`` run.

Its lifespan owns the process's resources: the database (migrated on start), the publisher
(with the outbox as fallback), and the services, which it stops and drains on shutdown; a
service that crashes stops the process (see :mod:`.health`). They live on the app's typed state
(:class:`rabbitry.web.AppState`). Every app answers ``/livez``, ``/readyz``, ``/healthz``,
``/metrics`` and ``/asyncapi.json``, whatever routers it serves, and answers an error of the
:mod:`rabbitry.errors` tree that a route lets go with ``{"error": ...}`` and its status
(:func:`rabbitry.web.status_of`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from rabbitry import metrics
from rabbitry._version import __version__
from rabbitry.app.asyncapi import asyncapi_document
from rabbitry.app.health import Health
from rabbitry.app.limits import BodyLimit
from rabbitry.app.operations import declare_system
from rabbitry.app.registry import Lifespan, build_service, system_topology
from rabbitry.app.registry import entity_pages as registry_entity_pages
from rabbitry.app.resources import open_publisher
from rabbitry.app.tracing import TraceRequests
from rabbitry.config import Settings
from rabbitry.errors import BrokerError, RabbitryError
from rabbitry.messaging.service import run_services
from rabbitry.messaging.verdicts import BLOCKED
from rabbitry.storage import open_database
from rabbitry.storage.listing import EntityPages
from rabbitry.web import (
    AppState,
    SystemTopology,
    app_state,
    bearer_token,
    is_admin,
    status_of,
    unauthorized,
)

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    routers: Sequence[APIRouter] = (),
    workers: Sequence[str] = (),
    lifespans: Sequence[Lifespan] = (),
    topology: SystemTopology = system_topology,
    entity_pages: Callable[[], Sequence[EntityPages]] = registry_entity_pages,
    on_crash: Callable[[], None] = lambda: None,
    declare: bool = True,
) -> FastAPI:
    """Build the app serving ``routers``; ``workers`` are service names run by the lifespan,
    ``lifespans`` the per-process resources of the parts served (entered in order),
    ``topology`` the system's broker objects (the back-office dashboard lists its queues),
    ``entity_pages`` the parts' lists the back-office shows. ``on_crash`` is called when a
    service crashed (the server stops the process on it); ``declare`` declares the whole
    system's topology at start (workers declare their own)."""
    state = AppState(settings, topology=topology, entity_pages=entity_pages)
    state.health = Health([], asyncio.Event())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            open_database(settings.sql_url) as database,
            open_publisher(settings, database) as publisher,
        ):
            state.database = database
            state.publisher = publisher
            if settings.rabbit_active and declare:
                try:
                    await declare_system(settings, [])
                except BrokerError as exc:
                    log.warning("broker not reachable at start (%s); workers will retry", exc)
            stopping = asyncio.Event()
            services = [build_service(name, settings) for name in workers]
            runner = asyncio.create_task(run_services(services, stopping))
            state.stopping = stopping
            health = Health(services, stopping)
            health.watch(runner, on_crash)
            state.health = health
            try:
                async with contextlib.AsyncExitStack() as parts:
                    for part_lifespan in lifespans:
                        await parts.enter_async_context(part_lifespan(app))
                    yield
            finally:
                stopping.set()
                with contextlib.suppress(Exception):
                    await runner

    workers_run = bool(workers)
    # Requests are traced by TraceRequests, on every FastAPI this package accepts; FastAPI's
    # own spans (newer versions have them) would trace each request a second time.
    app = FastAPI(
        title="Rabbitry", version=__version__, lifespan=lifespan, telemetry={"tracing": False}
    )
    app.state.rabbitry = state  # route dependencies (credentials) read it, lifespan or not
    app.add_middleware(BodyLimit, max_bytes=settings.http_max_body)
    app.add_middleware(TraceRequests)  # added last: outermost, so a 413 is traced too
    _install_error_handlers(app)

    @app.get("/livez")
    async def livez(request: Request) -> JSONResponse:
        """200 while the process runs its services; 503 once one crashed (the process is
        exiting) or it is stopping."""
        live, body = _health(request).live()
        return JSONResponse(body, status_code=200 if live else 503)

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """200 while live, every broker link consuming and the database answering."""
        state = app_state(request)
        ready, body = await health_of(state).ready(state.database)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        """200 when the database answers; the broker's state is reported, not required
        (the outbox keeps accepting messages while it is down)."""

        state = app_state(request)
        try:
            if state.database is None:
                raise RuntimeError("the app's database is not open: its lifespan did not run")
            async with state.database.session() as session:
                await session.execute(text("select 1"))
            database = "ok"
        except RabbitryError as exc:
            # This route is public: the driver's text (host names, users, SQL) goes to the
            # log, not to whoever asks.
            log.warning("healthz: the database does not answer: %s", exc)
            database = "unavailable"
        # Under `up`, a crashed service stops the others: then the process is not healthy,
        # whatever its database says.
        stopped = workers_run and state.stopping is not None and state.stopping.is_set()
        services = "stopped" if stopped else "ok"
        # A broker alarm does not make the process unhealthy (publishes go to the outbox
        # meanwhile), but an operator looking here should see it.
        blocked = state.publisher.blocked if state.publisher is not None else None
        healthy = database == "ok" and services == "ok"
        body = {
            "status": "ok" if healthy else "degraded",
            "database": database,
            "workers": services,
            "rabbit_active": settings.rabbit_active,
            "broker_blocked": f"{BLOCKED}: {blocked}" if blocked else None,
            "namespace": settings.namespace,
        }
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        """Prometheus exposition. With the admin token, every series; without it (allowed
        unless ``metrics_require_admin``), none that names a tenant."""
        token = bearer_token(request)
        admin = token is not None and is_admin(request, token)
        if settings.metrics_require_admin and not admin:
            raise unauthorized("/metrics needs the admin token")
        exposition = generate_latest(metrics.REGISTRY)
        if not admin:
            exposition = without_tenants(exposition, settings.namespace)
        return Response(exposition, media_type=CONTENT_TYPE_LATEST)

    described: list[dict[str, Any]] = []

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi() -> JSONResponse:
        """The broker side of the API, as /openapi.json is the HTTP side: every exchange,
        queue, binding and message type (without the broker's hosts: this answers anyone)."""
        if not described:
            described.append(asyncapi_document(settings, servers=False))
        return JSONResponse(described[0])

    for router in routers:
        app.include_router(router)
    return app


def health_of(state: AppState) -> Health:
    """The process's health (``create_app`` puts one on the state; its lifespan a live one)."""
    return cast(Health, state.health)


def _health(request: Request) -> Health:
    return health_of(app_state(request))


def without_tenants(exposition: bytes, namespace: str) -> bytes:
    """The exposition without the samples whose labels name a tenant (its queues, retry and
    dead-letter queues, its DISPATCH connection): what anyone may read."""
    marks = (f'"{namespace}.tenant.'.encode(), f'"{namespace}-dispatch-'.encode())
    lines = exposition.split(b"\n")
    return b"\n".join(line for line in lines if not any(mark in line for mark in marks))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RabbitryError)
    async def rabbitry_error(_: Request, exc: RabbitryError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.warning("answered %d: %s", status, exc)
        return JSONResponse({"error": str(exc)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"where": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"error": "invalid request", "details": errors}, status_code=422)
