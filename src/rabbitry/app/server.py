"""Running a Rabbitry process: ``rabbitry up`` (every router and service), ``rabbitry serve
NAME`` (one part's HTTP server) and ``rabbitry worker NAME…`` (services without HTTP).

Every process is run by :func:`rabbitry.messaging.service.serve`, which owns its signals: on
SIGTERM or SIGINT it sets ``stopping``, the HTTP server stops taking requests, and the app's
lifespan drains its workers. What a served part needs settled first (a generated credential,
the process's own URL) is the part's ``prepare`` hook in the registry, not a case here.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Sequence

import uvicorn
from fastapi import APIRouter

from rabbitry.app import registry
from rabbitry.app.http import create_app, health_of
from rabbitry.config import Settings
from rabbitry.errors import ConfigError, ServiceCrashed
from rabbitry.messaging.service import serve
from rabbitry.web import AppState, Process

log = logging.getLogger(__name__)


async def run_workers(
    settings: Settings, names: Sequence[str], *, host: str = "127.0.0.1", port: int | None = None
) -> None:
    """Run the named services until SIGTERM/SIGINT, then drain them; with a ``port``, behind
    an HTTP server answering only /livez, /readyz, /healthz and /metrics. A crashed service
    stops the others and raises :class:`~rabbitry.errors.ServiceCrashed` (exit code 1)."""
    if port is None:
        await serve(*(registry.build_service(name, settings) for name in names))
        return
    await _serve_http(settings, host=host, port=port, routers=(), workers=names, declare=False)


async def run_up(settings: Settings, *, host: str, port: int) -> None:
    """The whole system in one process: every part's routers and every ``up`` service."""
    settings = registry.prepare(settings, Process("up", f"http://{host}:{port}"))
    await _serve_http(
        settings,
        host=host,
        port=port,
        routers=registry.all_routers(),
        workers=registry.up_services(settings),
        lifespans=registry.lifespans(),
    )


async def run_part_server(settings: Settings, name: str, *, host: str, port: int) -> None:
    """One part's HTTP server (``rabbitry serve NAME``), with /healthz and /metrics."""
    servers = registry.servers(registry.serving(name))
    if name not in servers:
        known = ", ".join(registry.server_names())
        raise ConfigError(f"unknown server {name!r} (known: {known})")
    process = Process("serve", f"http://{host}:{port}")
    await _serve_http(
        registry.prepare(settings, process, name),
        host=host,
        port=port,
        routers=servers[name],
        workers=(),
        lifespans=registry.lifespans(name),
    )


class HttpServer:
    """A uvicorn server as a :class:`~rabbitry.messaging.service.Service`: it serves until
    ``stopping`` is set, then finishes its requests and runs the app's shutdown."""

    name = "http"

    def __init__(self, config: uvicorn.Config) -> None:
        self._server = _Uvicorn(config)

    async def run(self, stopping: asyncio.Event) -> None:
        watch = asyncio.create_task(self._stop_on(stopping))
        try:
            # Not `serve()`: it would install signal handlers of its own over the process's,
            # and raise the signal again on the way out (a drained process would report
            # death by SIGTERM instead of exit 0, which process managers expect).
            await self._server._serve()
        finally:
            watch.cancel()

    @property
    def started(self) -> bool:
        """Whether uvicorn got as far as serving (its lifespan started, its port bound)."""
        return self._server.started

    def stop(self) -> None:
        """Finish the requests in flight and shut down (a crashed service's way out)."""
        self._server.should_exit = True

    async def _stop_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self._server.should_exit = True


class _Uvicorn(uvicorn.Server):
    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes every open WebSocket with 1012 before the app's lifespan ends: let the
        # parts close theirs first, with their own codes (the chat gateway's 1001).
        for hook in AppState.of(self.config.app).before_shutdown:
            try:
                await hook()
            except Exception:
                log.exception("a shutdown hook failed; shutting down anyway")
        await super().shutdown(sockets)


async def _serve_http(
    settings: Settings,
    *,
    host: str,
    port: int,
    routers: Sequence[APIRouter],
    workers: Sequence[str],
    lifespans: Sequence[registry.Lifespan] = (),
    declare: bool = True,
) -> None:
    servers: list[HttpServer] = []

    def stop_serving() -> None:
        # A crashed service stops the process: uvicorn shuts down (the lifespan drains the
        # other services) and the process exits 1 below, never lingering as a zombie.
        for server in servers:
            server.stop()

    app = create_app(
        settings,
        routers=routers,
        workers=workers,
        lifespans=lifespans,
        on_crash=stop_serving,
        declare=declare,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        lifespan="on",
        # uvicorn's defaults are 16 MiB frames, 32 queued per socket, read before any check.
        ws_max_size=settings.ws_max_size,
        ws_max_queue=settings.ws_max_queue,
    )
    print(
        f"rabbitry: serving on http://{host}:{port} with workers: {', '.join(workers) or 'none'}",
        file=sys.stderr,
    )
    server = HttpServer(config)
    servers.append(server)
    await serve(server)
    crashed = health_of(AppState.of(app)).crashed
    if crashed is not None:
        raise ServiceCrashed(crashed)
    if not server.started:
        # uvicorn logged why (the lifespan failed, or the port is taken) and returned.
        raise ServiceCrashed("the process did not start (the reason is logged above)")
