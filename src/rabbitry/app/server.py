"""Running a Rabbitry process: ``rabbitry up`` (every router and service), ``rabbitry serve
NAME`` (one part's HTTP server) and ``rabbitry worker NAME…`` (services without HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence

import uvicorn
from fastapi import APIRouter
from pydantic import SecretStr

from rabbitry.app import registry
from rabbitry.app.http import create_app
from rabbitry.config import Settings
from rabbitry.errors import ConfigError, ServiceCrashed
from rabbitry.messaging.service import serve

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
    await _serve_http(
        _in_one_process(settings, host, port),
        host=host,
        port=port,
        routers=registry.all_routers(),
        workers=registry.up_services(settings),
        lifespans=registry.lifespans(),
    )


async def run_part_server(settings: Settings, name: str, *, host: str, port: int) -> None:
    """One part's HTTP server (``rabbitry serve NAME``), with /healthz and /metrics."""
    servers = registry.servers()
    if name not in servers:
        raise ConfigError(f"unknown server {name!r} (known: {', '.join(sorted(servers))})")
    await _serve_http(
        settings,
        host=host,
        port=port,
        routers=servers[name],
        workers=(),
        lifespans=registry.lifespans(name),
    )


def _in_one_process(settings: Settings, host: str, port: int) -> Settings:
    """Under ``up``, DISPATCH calls this very process's SESSION routes: with no service token
    configured, one is generated for the process (never printed: nothing outside needs it)."""
    update: dict[str, object] = {}
    if settings.service_token is None:
        update["service_token"] = SecretStr(secrets.token_urlsafe(32))
    if settings.session_url is None:
        update["session_url"] = f"http://{host}:{port}"
    return settings.model_copy(update=update) if update else settings


def with_admin_token(settings: Settings) -> Settings:
    """Generate the admin token when none is configured, and tell the operator once."""
    if settings.admin_token is not None:
        return settings
    token = secrets.token_urlsafe(24)
    print(
        f"rabbitry: generated admin token (set RABBITRY_ADMIN_TOKEN to fix it): {token}",
        file=sys.stderr,
    )
    return settings.model_copy(update={"admin_token": SecretStr(token)})


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
    if routers:  # the admin routes need it; a worker's health server has none
        settings = with_admin_token(settings)
    servers: list[_Server] = []

    def stop_serving() -> None:
        # A crashed service stops the process: uvicorn shuts down (the lifespan drains the
        # other services) and the process exits 1 below, never lingering as a zombie.
        for server in servers:
            server.should_exit = True

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
    server = _Server(config)
    servers.append(server)
    await server.serve()
    if app.state.health.crashed is not None:
        raise ServiceCrashed(app.state.health.crashed)
    if not server.started:
        # uvicorn logged why (the lifespan failed, or the port is taken) and returned.
        raise ServiceCrashed("the process did not start (the reason is logged above)")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful shutdown, so the process would report death
    by signal; Rabbitry drains its workers and exits 0 instead, as process managers expect."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn closes every open WebSocket with 1012 before the app's lifespan ends: let the
        # parts close theirs first, with their own codes (the chat gateway's 1001).
        state = getattr(self.config.app, "state", None)
        hooks: list[Callable[[], Awaitable[None]]] = getattr(state, "before_shutdown", [])
        for hook in hooks:
            try:
                await hook()
            except Exception:
                log.exception("a shutdown hook failed; shutting down anyway")
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
