"""The registry of parts: what each part adds to a running Rabbitry, in one place.

A part is one package (``rabbitry.outbox``, ``rabbitry.events``, …) plus one :class:`Part` entry
in :data:`PARTS`, naming its services (the workers ``rabbitry worker NAME`` runs), its HTTP
servers (``rabbitry serve NAME``: routers), its CLI commands, its broker topology, its database
migrations, its back-office entity pages and the hooks a process serving it calls. ``rabbitry
up``, ``serve``, ``worker``, ``topology declare`` and ``db upgrade`` are all built from this
table, so adding a part touches nothing else.

An entry names what it points at (``Ref("rabbitry.outbox.relay:RelayService")``) rather than
importing it: the table is read by every ``rabbitry`` command, and importing every part would
load FastAPI, SQLAlchemy and the broker client before ``rabbitry --help`` could answer
(1.9 s where 0.3 s is the budget). A command loads the parts it runs; ``tests/unit/
test_registry.py`` loads every reference, so a wrong one fails the tests, not a user.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from rabbitry.errors import ConfigError

if TYPE_CHECKING:
    import typer
    from fastapi import APIRouter, FastAPI

    from rabbitry.config import Settings
    from rabbitry.messaging.catalog import Catalog
    from rabbitry.messaging.service import Service
    from rabbitry.messaging.topology import Topology
    from rabbitry.storage.listing import EntityPages
    from rabbitry.storage.migrations import Migrations
    from rabbitry.web import Process

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ref(Generic[T]):
    """An object named by ``"package.module:attribute"``, imported when first loaded."""

    target: str

    def load(self) -> T:
        module, _, attribute = self.target.partition(":")
        return cast(T, getattr(importlib.import_module(module), attribute))


def _always(_: Settings) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A long-running service of a part; ``in_up`` says whether ``rabbitry up`` runs it."""

    build: Ref[Callable[[Settings], Service]]
    in_up: Callable[[Settings], bool] = _always
    summary: str = ""


@dataclass(frozen=True, slots=True)
class Commands:
    """A part's CLI commands: ``register`` adds them to the root ``rabbitry`` command.

    ``commands`` and ``groups`` (sub-command groups) name them with the one-line help that
    ``rabbitry --help`` lists, so that the listing needs no part loaded; the CLI's tests check
    that each line is the command's own.
    """

    register: Ref[Callable[[typer.Typer], None]]
    commands: Mapping[str, str] = field(default_factory=dict)
    groups: Mapping[str, str] = field(default_factory=dict)


Lifespan = Callable[["FastAPI"], AbstractAsyncContextManager[None]]
"""A part's per-process resources, for the HTTP app serving its routers: entered once the
app's database and publisher are on its state, exited before they close."""

Prepare = Callable[["Settings", "Process"], "Settings"]
"""What a part needs settled before a process serves its routers (a generated credential, the
process's own URL); returns the settings the process runs with."""


@dataclass(frozen=True, slots=True)
class Part:
    """One part of the system and everything it adds to a running Rabbitry.

    ``topology`` is what the part declares once; ``tenant_topology`` what it declares for each
    tenant (the tenants ``rabbitry topology declare --tenant`` names, or the back-office finds).
    """

    name: str
    summary: str
    services: Mapping[str, ServiceSpec] = field(default_factory=dict)
    servers: Mapping[str, Sequence[Ref[APIRouter]]] = field(default_factory=dict)
    commands: Commands | None = None
    topology: Ref[Callable[[Settings], Topology]] | None = None
    tenant_topology: Ref[Callable[[Settings, Iterable[str]], Topology]] | None = None
    lifespan: Ref[Lifespan] | None = None
    prepare: Ref[Prepare] | None = None
    # What its messages look like and where they go (`rabbitry topology asyncapi`).
    catalog: Ref[Callable[[Settings], Catalog]] | None = None
    migrations: Ref[Path] | None = None
    """The part's Alembic version location (its tables' revisions), if it has tables."""
    entity_pages: Sequence[Ref[Callable[[], EntityPages]]] = ()
    """The part's lists on the back-office's entity pages (rows an operator may send with ▶)."""


def _broker_on(settings: Settings) -> bool:
    # With rabbit_active=false there is no broker to relay to: rows wait for `rabbitry requeue`.
    return settings.rabbit_active


_DOMAIN: tuple[Part, ...] = (
    Part(
        name="outbox",
        summary="contingency outbox: requeue command, queue registry, relay",
        services={
            "relay": ServiceSpec(
                Ref("rabbitry.outbox.relay:RelayService"),
                in_up=_broker_on,
                summary="re-sends stored messages",
            )
        },
        commands=Commands(
            Ref("rabbitry.outbox.commands:register"),
            commands={
                "requeue": "Publish pending outbox rows again (oldest first), marking each once "
                "confirmed.",
            },
            groups={
                "queues": "The queue registry: which queues exist, what they are for, who may "
                "send to them.",
                "outbox": "The outbox's stored messages: list them with filters, show one, "
                "soft-delete.",
            },
        ),
        catalog=Ref("rabbitry.outbox.catalog:catalog"),
        migrations=Ref("rabbitry.outbox:MIGRATIONS"),
    ),
    Part(
        name="events",
        summary="event sourcing: module routing, change events, the workflow module",
        services={
            "workflow": ServiceSpec(
                Ref("rabbitry.events.workflow:WorkflowService"),
                summary="stores change events, logs module messages",
            )
        },
        servers={"events": [Ref("rabbitry.events.http:router")]},
        commands=Commands(
            Ref("rabbitry.events.commands:register"),
            groups={"events": "Change events: an entity's history, and its state rebuilt from it."},
        ),
        topology=Ref("rabbitry.events.topology:topology"),
        prepare=Ref("rabbitry.web:with_admin_token"),
        catalog=Ref("rabbitry.events.catalog:catalog"),
        migrations=Ref("rabbitry.events:MIGRATIONS"),
        entity_pages=(Ref("rabbitry.events.entity_pages:EventSourcedPages"),),
    ),
    Part(
        name="sessions",
        summary="multi-tenant session revocation: USER, SESSION and DISPATCH",
        services={
            "dispatch": ServiceSpec(
                Ref("rabbitry.sessions.dispatch:DispatchService"),
                in_up=_broker_on,
                summary="removes a removed user's sessions, tenant by tenant",
            )
        },
        servers={
            "user": [Ref("rabbitry.sessions.http:user_router")],
            "session": [Ref("rabbitry.sessions.http:session_router")],
        },
        topology=Ref("rabbitry.sessions.topology:topology"),
        tenant_topology=Ref("rabbitry.sessions.topology:tenant_topology"),
        lifespan=Ref("rabbitry.sessions.http:lifespan"),
        prepare=Ref("rabbitry.sessions.http:prepare"),
        catalog=Ref("rabbitry.sessions.catalog:catalog"),
        migrations=Ref("rabbitry.sessions:MIGRATIONS"),
        entity_pages=(
            Ref("rabbitry.sessions.entity_pages:TenantPages"),
            Ref("rabbitry.sessions.entity_pages:UserPages"),
        ),
    ),
    Part(
        name="chat",
        summary="WebSocket chat across gateway instances",
        services={
            "chat-persist": ServiceSpec(
                Ref("rabbitry.chat.persistence:PersistenceService"),
                in_up=_broker_on,
                summary="stores chat messages once each",
            )
        },
        servers={"chat": [Ref("rabbitry.chat.http:router")]},
        topology=Ref("rabbitry.chat.topology:topology"),
        lifespan=Ref("rabbitry.chat.http:lifespan"),
        catalog=Ref("rabbitry.chat.catalog:catalog"),
        migrations=Ref("rabbitry.chat:MIGRATIONS"),
        entity_pages=(Ref("rabbitry.chat.entity_pages:RoomPages"),),
    ),
)

PARTS: tuple[Part, ...] = (
    *_DOMAIN,
    Part(
        name="backoffice",
        summary="back-office pages: messages to enqueue, entity lists with ▶, dead letters",
        servers={"backoffice": [Ref("rabbitry.backoffice.http:router")]},
        lifespan=Ref("rabbitry.backoffice.http:lifespan"),
        prepare=Ref("rabbitry.web:with_admin_token"),
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


def server_names(parts: Iterable[Part] = PARTS) -> list[str]:
    """The names ``rabbitry serve NAME`` knows (unique across parts), loading no part."""
    found: list[str] = []
    for part in parts:
        for name in part.servers:
            if name in found:
                raise ConfigError(f"two parts define the server {name!r}")
            found.append(name)
    return found


def serving(server: str | None = None) -> list[Part]:
    """The parts with routers in ``server`` (every part with a server when None)."""
    return [part for part in PARTS if (server in part.servers if server else part.servers)]


def servers(parts: Iterable[Part] = PARTS) -> dict[str, list[APIRouter]]:
    """Every HTTP server ``rabbitry serve NAME`` can run, with its routers (loaded)."""
    parts = list(parts)
    server_names(parts)  # refuses a name defined twice
    return {
        name: [ref.load() for ref in refs] for part in parts for name, refs in part.servers.items()
    }


def build_service(name: str, settings: Settings) -> Service:
    """The service called ``name``, built from the settings."""
    spec = services().get(name)
    if spec is None:
        known = ", ".join(sorted(services()))
        raise ConfigError(f"unknown worker {name!r} (known: {known})")
    return spec.build.load()(settings)


def up_services(settings: Settings) -> list[str]:
    """The services ``rabbitry up`` runs with these settings."""
    return [name for name, spec in services().items() if spec.in_up(settings)]


def lifespans(server: str | None = None) -> list[Lifespan]:
    """The lifespans of the parts serving ``server`` (every part with a server when None)."""
    return [part.lifespan.load() for part in serving(server) if part.lifespan is not None]


def prepare(settings: Settings, process: Process, server: str | None = None) -> Settings:
    """The settings a process serving ``server`` (every part's when None) runs with: each
    served part's :data:`Prepare` hook applied in turn."""
    for part in serving(server):
        if part.prepare is not None:
            settings = part.prepare.load()(settings, process)
    return settings


def all_routers() -> list[APIRouter]:
    """Every router of every server: what ``rabbitry up`` serves."""
    return [router for routers in servers().values() for router in routers]


def system_topology(settings: Settings, tenants: Iterable[str] = ()) -> Topology:
    """Everything ``rabbitry topology declare`` declares; ``tenants`` adds their objects."""
    from rabbitry.messaging.topology import Topology

    tenants = list(tenants)
    result = Topology()
    for part in PARTS:
        if part.tenant_topology is not None:
            result |= part.tenant_topology.load()(settings, tenants)
        if part.topology is not None:
            result |= part.topology.load()(settings)
    return result


def migrations(parts: Iterable[Part] = PARTS) -> Migrations:
    """The parts' migrations, with the tables they declare (for autogenerate): what ``rabbitry
    db upgrade`` applies."""
    from rabbitry.storage.base import Base
    from rabbitry.storage.migrations import Migrations

    return Migrations(
        [part.migrations.load() for part in parts if part.migrations is not None], Base.metadata
    )


def entity_pages(parts: Iterable[Part] = PARTS) -> list[EntityPages]:
    """Every part's entity pages, in the registry's order: what the back-office lists."""
    return [pages.load()() for part in parts for pages in part.entity_pages]
