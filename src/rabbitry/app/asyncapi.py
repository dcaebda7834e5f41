"""The system's AsyncAPI document: every part's exchanges, queues, bindings and message types,
from the registry of parts. ``rabbitry topology asyncapi`` prints it; every HTTP process serves
it at ``/asyncapi.json``, next to its OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rabbitry._version import __version__
from rabbitry.app.registry import PARTS, system_topology
from rabbitry.config import Settings
from rabbitry.messaging import asyncapi
from rabbitry.messaging.catalog import Catalog


def system_catalog(settings: Settings) -> Catalog:
    """Every part's catalog, merged."""
    result = Catalog()
    for part in PARTS:
        if part.catalog is not None:
            result |= part.catalog.load()(settings)
    return result


def asyncapi_document(
    settings: Settings, *, tenants: Iterable[str] = (), servers: bool = True
) -> dict[str, Any]:
    """The AsyncAPI 3 document of this deployment (``tenants`` adds their queues by name;
    ``servers`` lists the broker's hosts, never its credentials)."""
    return asyncapi.document(
        system_topology(settings, tenants),
        system_catalog(settings),
        title="Rabbitry",
        version=__version__,
        description=(
            f"The broker topology of the Rabbitry deployment in namespace "
            f"{settings.namespace!r}: its exchanges, queues and bindings, and the messages "
            "that travel on them, in RoadRunner's format (JSON body, rr_* headers)."
        ),
        broker_url=settings.amqp_url.get_secret_value() if servers else None,
    )
