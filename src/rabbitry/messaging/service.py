"""The lifecycle every long-running part of Rabbitry follows (workers, relay, gateways).

A service runs until ``stopping`` is set, then stops taking work, drains what is in flight and
returns. ``rabbitry up`` runs several services in one process; ``rabbitry worker NAME`` runs one;
a library user runs a :class:`~rabbitry.messaging.worker.Worker` with :func:`serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import Protocol

from rabbitry.errors import ServiceCrashed

log = logging.getLogger(__name__)


class Service(Protocol):
    name: str

    async def run(self, stopping: asyncio.Event) -> None:
        """Work until ``stopping`` is set; then drain and return."""


def install_signal_handlers(stopping: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stopping``: stop taking work, drain, exit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.set)


async def run_services(services: Sequence[Service], stopping: asyncio.Event) -> None:
    """Run services side by side until ``stopping``; a crashed one stops the others, and once
    they have drained :class:`~rabbitry.errors.ServiceCrashed` is raised: a process must not
    go on looking alive with its services gone."""
    if not services:  # nothing to run (an HTTP server alone): wait as the services would
        await stopping.wait()
        return
    tasks = [asyncio.create_task(s.run(stopping), name=s.name) for s in services]
    crashed: list[tuple[str, BaseException]] = []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if (exc := task.exception()) is not None:
                log.error("service %s crashed: %r", task.get_name(), exc)
                crashed.append((task.get_name(), exc))
                stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        stopping.set()
    if crashed:
        name, exc = crashed[0]
        raise ServiceCrashed(f"service {name} crashed: {exc}") from exc


async def serve(*services: Service) -> None:
    """Run ``services`` until SIGTERM or SIGINT, then drain them: a daemon's whole main."""
    stopping = asyncio.Event()
    install_signal_handlers(stopping)
    await run_services(services, stopping)
