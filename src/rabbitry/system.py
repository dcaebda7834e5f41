"""Which services make up a Rabbitry process, and how ``up``/``serve``/``worker`` run them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import sys
from collections.abc import Iterator, Sequence

import uvicorn
from pydantic import SecretStr

from rabbitry.config import Settings
from rabbitry.errors import ConfigError
from rabbitry.messaging.worker import install_signal_handlers, run_services
from rabbitry.service import Service

log = logging.getLogger(__name__)

# What `rabbitry up` runs besides HTTP. The relay is left out when rabbit_active is false:
# there is no broker to relay to.
UP_WORKERS = ("workflow", "relay")


def build_service(name: str, settings: Settings) -> Service:
    """The service called ``name``; each part builds its own from the settings."""
    if name == "workflow":
        from rabbitry.cli.events import workflow_service

        service: Service = workflow_service(settings)
        return service
    if name == "relay":
        from rabbitry.cli.outbox import relay_service

        service = relay_service(settings)
        return service
    raise ConfigError(f"unknown worker {name!r}")


def up_workers(settings: Settings) -> list[str]:
    return [n for n in UP_WORKERS if n != "relay" or settings.rabbit_active]


async def run_workers(settings: Settings, names: Sequence[str]) -> None:
    stopping = asyncio.Event()
    install_signal_handlers(stopping)
    await run_services([build_service(n, settings) for n in names], stopping)


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


async def run_server(
    settings: Settings, *, host: str, port: int, workers: Sequence[str] | None
) -> None:
    """Serve the HTTP app; its lifespan runs the workers (all of ``up`` when None)."""
    from rabbitry.api import create_app

    settings = with_admin_token(settings)
    names = up_workers(settings) if workers is None else list(workers)
    app = create_app(settings, workers=names)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on")
    print(
        f"rabbitry: serving on http://{host}:{port} with workers: {', '.join(names) or 'none'}",
        file=sys.stderr,
    )
    await _Server(config).serve()


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful shutdown, so the process would report death
    by signal; Rabbitry drains its workers and exits 0 instead, as process managers expect."""

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
