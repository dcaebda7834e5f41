"""The messages of the sessions part, for documents: removal requests on ``<ns>.tenants``
(one queue per tenant, declared when the tenant is created) and revocation notices on the
fanout ``<ns>.sessions.revoked``."""

from __future__ import annotations

from rabbitry.config import Settings
from rabbitry.messaging.catalog import Catalog, Destination, MessageKind
from rabbitry.messaging.topology import work_queue
from rabbitry.sessions.notices import REVOKED
from rabbitry.sessions.removal import REMOVAL
from rabbitry.sessions.topology import TenantsLayout

_TENANT = {"type": "string", "pattern": "^[a-z0-9-]{1,63}$", "description": "The tenant."}
_USER_ID = {"type": "integer", "format": "int64", "description": "The user's id."}


def tenant_queue_template(namespace: str) -> str:
    """The name of every tenant's removal queue, ``{tenant}`` standing for the tenant."""
    return f"{namespace}.tenant.{{tenant}}.removals"


def catalog(settings: Settings) -> Catalog:
    layout = TenantsLayout(settings.namespace)
    key = "{tenant}.session-removal"
    queue = tenant_queue_template(settings.namespace)
    removal = MessageKind(
        key="sessions.session-removal",
        type=REMOVAL,
        title="session removal request",
        summary="A user was removed from a tenant: remove every session of theirs.",
        payload={
            "type": "object",
            "properties": {"tenant": _TENANT, "user_id": _USER_ID},
            "required": ["tenant", "user_id"],
        },
        destinations=(Destination(layout.tenants_exchange, key),),
        tenant=True,
        example={"tenant": "acme", "user_id": 42},
    )
    revoked = MessageKind(
        key="sessions.session.revoked",
        type=REVOKED,
        title="session revoked notice",
        summary="A session was revoked: whoever holds it open (a chat socket) closes it. "
        "A hint, published without the outbox.",
        payload={
            "type": "object",
            "properties": {
                "tenant": _TENANT,
                "user_id": _USER_ID,
                "session_id": {"type": "string", "description": "The revoked session."},
            },
            "required": ["tenant", "user_id", "session_id"],
        },
        destinations=(Destination(layout.revoked_exchange, ""),),
        tenant=True,
    )
    return Catalog(
        messages=(removal, revoked),
        runtime=work_queue(
            queue,
            policy=settings.retry,
            queue_type=settings.queue_type,
            bindings=[(layout.tenants_exchange, key)],
            single_active=True,
        ),
        parameters={"tenant": "A tenant's name (1-63 lower-case letters, digits or '-')."},
        consumers={
            queue: "DISPATCH (rabbitry worker dispatch) reads the user's sessions and has "
            "SESSION delete each, then acks.",
        },
    )
