"""The registry of parts: what each part adds to a running Rabbitry, in one place.

A part is one package (``rabbitry.outbox``, ``rabbitry.events``, …) plus one :class:`Part` entry
in :data:`PARTS`, naming its services (the workers ``rabbitry worker NAME`` runs), its HTTP
servers (``rabbitry serve NAME``: routers), its CLI commands, its broker topology and its
database migrations. ``rabbitry up``, ``serve``, ``worker``, ``topology declare`` and ``db
upgrade`` are all built from this table, so adding a part touches nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import typer
from fastapi import APIRouter, FastAPI

from rabbitry import chat, events, outbox, sessions
from rabbitry.backoffice import http as backoffice_http
from rabbitry.chat import catalog as chat_catalog
from rabbitry.chat import http as chat_http
from rabbitry.chat import topology as chat_topology
from rabbitry.chat.entity_pages import RoomPages
from rabbitry.chat.persistence import PersistenceService
from rabbitry.config import Settings
from rabbitry.errors import ConfigError
from rabbitry.events import catalog as events_catalog
from rabbitry.events import commands as events_commands
from rabbitry.events import http as events_http
from rabbitry.events import topology as events_topology
from rabbitry.events.entity_pages import EventSourcedPages
from rabbitry.events.workflow import WorkflowService
from rabbitry.messaging.catalog import Catalog
from rabbitry.messaging.service import Service
from rabbitry.messaging.topology import Topology
from rabbitry.outbox import catalog as outbox_catalog
from rabbitry.outbox import commands as outbox_commands
from rabbitry.outbox.relay import RelayService
from rabbitry.sessions import catalog as sessions_catalog
from rabbitry.sessions import http as sessions_http
from rabbitry.sessions import topology as sessions_topology
from rabbitry.sessions.dispatch import DispatchService
from rabbitry.sessions.entity_pages import TenantPages, UserPages
from rabbitry.storage.base import Base
from rabbitry.storage.listing import EntityPages
from rabbitry.storage.migrations import Migrations


def _always(_: Settings) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A long-running service of a part; ``in_up`` says whether ``rabbitry up`` runs it."""

    build: Callable[[Settings], Service]
    in_up: Callable[[Settings], bool] = _always
    summary: str = ""


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]
"""A part's per-process resources, for the HTTP app serving its routers: entered once the
app's database and publisher are on ``app.state``, exited before they close."""


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    summary: str
    services: Mapping[str, ServiceSpec] = field(default_factory=dict)
    servers: Mapping[str, Sequence[APIRouter]] = field(default_factory=dict)
    commands: Callable[[typer.Typer], None] | None = None
    topology: Callable[[Settings], Topology] | None = None
    lifespan: Lifespan | None = None
    # What its messages look like and where they go (`rabbitry topology asyncapi`).
    catalog: Callable[[Settings], Catalog] | None = None
    migrations: Path | None = None
    """The part's Alembic version location (its tables' revisions), if it has tables."""
    entity_pages: Sequence[EntityPages] = ()
    """The part's lists on the back-office's entity pages (rows an operator may send with ▶)."""


def _broker_on(settings: Settings) -> bool:
    # With rabbit_active=false there is no broker to relay to: rows wait for `rabbitry requeue`.
    return settings.rabbit_active


_DOMAIN: tuple[Part, ...] = (
    Part(
        name="outbox",
        summary="contingency outbox: requeue command, queue registry, relay",
        services={
            "relay": ServiceSpec(RelayService, in_up=_broker_on, summary="re-sends stored messages")
        },
        commands=outbox_commands.register,
        catalog=outbox_catalog.catalog,
        migrations=outbox.MIGRATIONS,
    ),
    Part(
        name="events",
        summary="event sourcing: module routing, change events, the workflow module",
        services={
            "workflow": ServiceSpec(
                WorkflowService, summary="stores change events, logs module messages"
            )
        },
        servers={"events": [events_http.router]},
        commands=events_commands.register,
        topology=events_topology.topology,
        catalog=events_catalog.catalog,
        migrations=events.MIGRATIONS,
        entity_pages=(EventSourcedPages(),),
    ),
    Part(
        name="sessions",
        summary="multi-tenant session revocation: USER, SESSION and DISPATCH",
        services={
            "dispatch": ServiceSpec(
                DispatchService,
                in_up=_broker_on,
                summary="removes a removed user's sessions, tenant by tenant",
            )
        },
        servers={"user": [sessions_http.user_router], "session": [sessions_http.session_router]},
        topology=sessions_topology.topology,
        lifespan=sessions_http.lifespan,
        catalog=sessions_catalog.catalog,
        migrations=sessions.MIGRATIONS,
        entity_pages=(TenantPages(), UserPages()),
    ),
    Part(
        name="chat",
        summary="WebSocket chat across gateway instances",
        services={
            "chat-persist": ServiceSpec(
                PersistenceService, in_up=_broker_on, summary="stores chat messages once each"
            )
        },
        servers={"chat": [chat_http.router]},
        topology=chat_topology.topology,
        lifespan=chat_http.lifespan,
        catalog=chat_catalog.catalog,
        migrations=chat.MIGRATIONS,
        entity_pages=(RoomPages(),),
    ),
)

PARTS: tuple[Part, ...] = (
    *_DOMAIN,
    Part(
        name="backoffice",
        summary="back-office pages: messages to enqueue, entity lists with ▶, dead letters",
        servers={
            "backoffice": [
                backoffice_http.build(
                    # The dashboard lists the whole system's queues; resolved when a page asks.
                    lambda s, t: system_topology(s, t),
                    [pages for part in _DOMAIN for pages in part.entity_pages],
                )
            ]
        },
        lifespan=backoffice_http.lifespan,
    ),
)


def services(parts: Iterable[Part] = PARTS) -> dict[str, ServiceSpec]:
    """Every service by name, across parts (names are unique)."""
    found: dict[str, ServiceSpec] = {}
    for part in parts:
        for name, spec in part.services.items():
            if name in found:
                raise ConfigError(f"two parts define the service {name!r}")
            found[name] = spec
    return found


def servers(parts: Iterable[Part] = PARTS) -> dict[str, list[APIRouter]]:
    """Every HTTP server ``rabbitry serve NAME`` can run, with its routers."""
    found: dict[str, list[APIRouter]] = {}
    for part in parts:
        for name, routers in part.servers.items():
            if name in found:
                raise ConfigError(f"two parts define the server {name!r}")
            found[name] = list(routers)
    return found


def build_service(name: str, settings: Settings) -> Service:
    """The service called ``name``, built from the settings."""
    spec = services().get(name)
    if spec is None:
        known = ", ".join(sorted(services()))
        raise ConfigError(f"unknown worker {name!r} (known: {known})")
    return spec.build(settings)


def up_services(settings: Settings) -> list[str]:
    """The services ``rabbitry up`` runs with these settings."""
    return [name for name, spec in services().items() if spec.in_up(settings)]


def lifespans(server: str | None = None) -> list[Lifespan]:
    """The lifespans of the parts serving ``server`` (every part with a server when None)."""
    return [
        part.lifespan
        for part in PARTS
        if part.lifespan is not None and (server in part.servers if server else part.servers)
    ]


def all_routers() -> list[APIRouter]:
    """Every router of every server: what ``rabbitry up`` serves."""
    return [router for routers in servers().values() for router in routers]


def system_topology(settings: Settings, tenants: Iterable[str] = ()) -> Topology:
    """Everything ``rabbitry topology declare`` declares; ``tenants`` adds their queues."""
    result = sessions_topology.tenant_topology(settings, tenants)
    for part in PARTS:
        if part.topology is not None:
            result |= part.topology(settings)
    return result


def migrations(parts: Iterable[Part] = PARTS) -> Migrations:
    """The parts' migrations, with the tables they declare (for autogenerate): what ``rabbitry
    db upgrade`` applies."""
    return Migrations(
        [part.migrations for part in parts if part.migrations is not None], Base.metadata
    )


def entity_pages(parts: Iterable[Part] = PARTS) -> list[EntityPages]:
    """Every part's entity pages, in the registry's order: what the back-office lists."""
    return [pages for part in parts for pages in part.entity_pages]
