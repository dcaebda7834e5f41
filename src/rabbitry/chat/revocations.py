"""RevocationWatch: a revoked session's sockets close on every gateway instance at once.

The sessions part announces every revoked session on the fanout exchange
``<ns>.sessions.revoked`` (body ``{"tenant", "user_id", "session_id"}``). Each gateway binds a
second queue of its own (an :class:`~rabbitry.messaging.inbox.Inbox`) to it and closes the
sockets of that session as the notice arrives. Notices are not kept for absent listeners, so
after the watch reconnects it authenticates every open socket again and closes those whose
session is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from rabbitry.chat.gateway import Gateway
from rabbitry.chat.manager import REVOKED
from rabbitry.errors import RabbitryError
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.inbox import Inbox
from rabbitry.messaging.topology import Exchange, ExchangeType
from rabbitry.sessions import TenantsLayout

log = logging.getLogger(__name__)

# True while the (tenant, token) pair still stands for a live session.
StillValid = Callable[[str, str], Awaitable[bool]]
# Evicts (tenant, user id, session id) from this process's session cache.
Forget = Callable[[str, int, str], Awaitable[object]]


class RevocationWatch:
    """Closes ``gateway``'s sockets of revoked sessions; ``async with watch.running():``."""

    def __init__(
        self, gateway: Gateway, still_valid: StillValid, forget: Forget | None = None
    ) -> None:
        settings = gateway.settings
        self._gateway = gateway
        self._still_valid = still_valid
        self._forget = forget
        self._checks: set[asyncio.Task[int]] = set()
        self.inbox = Inbox(
            settings.amqp,
            name=f"{settings.namespace}.chat.revocations.{gateway.instance}",
            exchange=Exchange(
                TenantsLayout(settings.namespace).revoked_exchange, ExchangeType.FANOUT
            ),
            on_message=self._on_notice,
            on_connected=self._on_connected,
        )
        self.inbox.want("")  # a fanout exchange: one binding hears every notice

    def _on_notice(self, message: Message) -> None:
        body = message.payload
        if not isinstance(body, dict):
            return
        tenant, user_id, session_id = (
            body.get("tenant"),
            body.get("user_id"),
            body.get("session_id"),
        )
        if not isinstance(tenant, str) or user_id is None or not isinstance(session_id, str):
            log.warning("ignoring a malformed revocation notice %s", message.id)
            return
        if self._forget is not None and isinstance(user_id, int):
            # This process's own cache (no Redis) would let the token open new sockets until
            # its entry expires: the notice evicts it too.
            self._track(self._evict(self._forget, tenant, user_id, session_id))
        closed = self._gateway.manager.disconnect_member(
            tenant, str(user_id), "session revoked", session_id=session_id
        )
        if closed:
            log.info("closed %d socket(s) of a revoked session of user %s", closed, user_id)

    def _on_connected(self, generation: int) -> None:
        if generation > 1:  # notices sent while we were away are lost: check every socket
            self._track(self.recheck())

    def _track(self, work: Coroutine[Any, Any, int]) -> None:
        task = asyncio.create_task(work)
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    @staticmethod
    async def _evict(forget: Forget, tenant: str, user_id: int, session_id: str) -> int:
        try:
            await forget(tenant, user_id, session_id)
        except RabbitryError as exc:
            log.warning("cannot evict a revoked session from the cache: %s", exc)
            return 0
        return 1

    async def recheck(self) -> int:
        """Authenticate every open socket again; close those whose session is gone."""
        closed = 0
        for client in self._gateway.manager.all_clients():
            try:
                valid = await self._still_valid(client.member.tenant, client.token)
            except RabbitryError as exc:
                log.warning("cannot re-check a session (%s); keeping the socket", exc)
                continue
            if not valid:
                client.disconnect(REVOKED, "session revoked")
                closed += 1
        return closed

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RevocationWatch]:
        stopping = asyncio.Event()
        task = asyncio.create_task(self.inbox.run(stopping), name=self.inbox.name)
        try:
            yield self
        finally:
            stopping.set()
            for check in list(self._checks):
                check.cancel()
            with contextlib.suppress(Exception):
                await task
