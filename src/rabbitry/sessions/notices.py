"""Revocation notices: every revoked session is announced on the fanout exchange
``<ns>.sessions.revoked`` as a ``session.revoked`` message, body
``{"tenant", "user_id", "session_id"}`` (header ``x-tenant`` too), so other processes (the chat
gateways) close what that session opened.

A notice is a hint, not the record: it is published without the outbox (a notice nobody is
bound to hear is not an error, and one replayed an hour later helps nobody). A listener that
was disconnected must re-check its sessions with :meth:`SessionManager.authenticate` after it
reconnects, since notices sent meanwhile are gone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.sessions.store import SessionRecord
from rabbitry.sessions.topology import TenantsLayout

log = logging.getLogger(__name__)

REVOKED = "session.revoked"


def notice(record: SessionRecord) -> Message:
    return Message(
        type=REVOKED,
        payload={"tenant": record.tenant, "user_id": record.user_id, "session_id": record.id},
        tenant=record.tenant,
    )


class RevocationNotices:
    """A :class:`~rabbitry.sessions.manager.RevocationListener` publishing to the broker."""

    def __init__(self, publisher: Publisher, namespace: str) -> None:
        self._publisher = publisher
        self._exchange = TenantsLayout(namespace).revoked_exchange

    async def revoked(self, records: Sequence[SessionRecord]) -> None:
        route = Route(self._exchange, "")
        results = await self._publisher.publish_many(
            [(notice(r), route) for r in records], use_fallback=False
        )
        lost = [r for r in results if r.status is PublishStatus.FAILED]
        if lost and not all((r.error or "").startswith("unroutable") for r in lost):
            log.warning("%d revocation notice(s) not published: %s", len(lost), lost[0].error)
