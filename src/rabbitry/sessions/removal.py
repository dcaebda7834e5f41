"""USER's side of a removal (steps 1-3 of a removal), and the removal request's format.

``DELETE /api/tenants/{t}/users/{id}`` removes the user for that tenant (step 2), then hands two
messages to the publisher, whose fallback is the outbox (step 3): the removal request, to
``<ns>.tenants`` with key ``<t>.session-removal`` (so it lands in the tenant's own queue), and a
``delete`` change event of the user entity, which the events part stores (who was removed, in
which tenant, when). If the broker cannot take them they wait in the outbox, and the relay sends
them later: the admin gets 202 either way and never waits for the sessions to go.

Repeating the DELETE re-sends the request (removing the sessions of a removed user twice is
harmless), so a caller that lost the answer can simply try again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rabbitry.config import Settings
from rabbitry.errors import MessageError
from rabbitry.events import SYSTEM_USER, ChangeEvent, ChangeType, Emitter
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.sessions.tenants import check_tenant
from rabbitry.sessions.topology import TenantsLayout
from rabbitry.sessions.users import Users

REMOVAL = "session-removal"  # rr_job of a removal request
USER_ENTITY = "rabbitry.sessions.User"  # the entity of the change events


@dataclass(frozen=True, slots=True)
class RemovalRequest:
    tenant: str
    user_id: int

    def message(self) -> Message:
        return Message(
            type=REMOVAL,
            payload={"tenant": self.tenant, "user_id": self.user_id},
            tenant=self.tenant,
        )

    @classmethod
    def parse(cls, message: Message) -> RemovalRequest:
        """The request a message carries; :class:`MessageError` if it carries none."""
        payload = message.payload
        if not isinstance(payload, dict):
            raise MessageError("a removal request is a JSON object")
        tenant, user_id = payload.get("tenant"), payload.get("user_id")
        if not isinstance(tenant, str) or not isinstance(user_id, int) or isinstance(user_id, bool):
            raise MessageError("a removal request needs 'tenant' (string) and 'user_id' (integer)")
        try:
            check_tenant(tenant)
        except ValueError as exc:
            raise MessageError(str(exc)) from None
        return cls(tenant, user_id)


@dataclass(frozen=True, slots=True)
class RemovalReceipt:
    tenant: str
    user_id: int
    removed: bool  # the user existed until this call
    request: PublishStatus  # published, or persisted in the outbox

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "user_id": self.user_id,
            "removed": self.removed,
            "request": str(self.request),
        }


class UserRemoval:
    """Removes a user and enqueues the removal of their sessions."""

    def __init__(self, settings: Settings, users: Users, publisher: Publisher) -> None:
        self._layout = TenantsLayout(settings.namespace)
        self._users = users
        self._publisher = publisher
        self._emitter = Emitter(publisher, settings)

    def route(self, tenant: str) -> Route:
        return Route(
            self._layout.tenants_exchange,
            self._layout.tenant_routing_key(tenant),
            queue=self._layout.tenant_queue(tenant),
        )

    async def remove(self, tenant: str, user_id: int) -> RemovalReceipt:
        user = await self._users.remove(tenant, user_id)
        items = [(RemovalRequest(tenant, user_id).message(), self.route(tenant))]
        if user is not None:
            change = ChangeEvent(
                ChangeType.DELETE,
                USER_ENTITY,
                user_id,
                SYSTEM_USER,
                {"tenant": tenant, "username": user.username, "removed_by": "admin"},
            )
            items.append(self._emitter.message(change))
        # The fallback stores what the broker refuses; a StorageError here means both failed,
        # and the caller's 5xx says so (the user is gone; repeating the DELETE re-sends).
        results = await self._publisher.publish_many(items)
        return RemovalReceipt(tenant, user_id, user is not None, results[0].status)
