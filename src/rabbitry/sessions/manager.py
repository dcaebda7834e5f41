"""SESSION's logic: log in, authenticate a token, list and revoke sessions.

Revocation removes a session from the store first and from the cache second; the paths that
write the cache (login, and a cache miss in :meth:`SessionManager.authenticate`) read the store
again after writing. Whatever the interleaving, a revoked session cannot be left in the cache:
either the revocation's eviction comes after the cache write, or the re-read sees it gone and
evicts it. The same re-read makes a login that races its user's removal undo itself.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from rabbitry.sessions.cache import SessionCache
from rabbitry.sessions.coalescer import RevocationCoalescer
from rabbitry.sessions.store import SessionRecord, SessionStore
from rabbitry.sessions.throttle import LoginThrottle
from rabbitry.sessions.tokens import (
    new_session_id,
    new_token,
    token_hash,
    token_tenant,
)
from rabbitry.sessions.users import UserInfo, Users
from rabbitry.storage.clock import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid session token stands for."""

    tenant: str
    user_id: int
    username: str
    session_id: str
    expires_at: dt.datetime

    @classmethod
    def of(cls, record: SessionRecord) -> Principal:
        return cls(record.tenant, record.user_id, record.username, record.id, record.expires_at)


class LoginStatus(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # unknown user or wrong password: one answer for both
    THROTTLED = "throttled"


@dataclass(frozen=True, slots=True)
class LoginResult:
    status: LoginStatus
    session: SessionRecord | None = None
    token: str | None = None


class RevocationListener(Protocol):
    """Told of every revoked session (the chat part closes that user's sockets)."""

    async def revoked(self, records: Sequence[SessionRecord]) -> None: ...


class SessionManager:
    """Sessions of every tenant, over a store, a cache and the users table."""

    def __init__(
        self,
        store: SessionStore,
        cache: SessionCache,
        users: Users,
        throttle: LoginThrottle,
        *,
        ttl: float,
        listener: RevocationListener | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.users = users
        self._throttle = throttle
        self._ttl = dt.timedelta(seconds=ttl)
        self._listener = listener
        self._singles = RevocationCoalescer(self.revoke)

    async def login(
        self, tenant: str, username: str, password: str, *, client: str = ""
    ) -> LoginResult:
        """A new session and its token, or why not; ``client`` is the caller's address (the
        throttle limits attempts per address too)."""
        # The attempt is counted before the password is checked: concurrent guesses cannot
        # all get through before the first failure is recorded.
        if not await self._throttle.attempt(tenant, username, client):
            return LoginResult(LoginStatus.THROTTLED)
        user = await self.users.verify(tenant, username, password)
        if user is None:
            return LoginResult(LoginStatus.REFUSED)
        await self._throttle.succeeded(tenant, username, client)
        token = new_token(tenant)
        record = _new_record(user, token, self._ttl)
        await self.store.add(record)
        await self.cache.put(record)
        if await self.users.get(tenant, user.id) is None or await self._gone(record):
            # The user was removed while logging in: DISPATCH may have listed their sessions
            # before this one existed, so this login removes it itself.
            await self.revoke(tenant, [record.id])
            return LoginResult(LoginStatus.REFUSED)
        return LoginResult(LoginStatus.OK, record, token)

    async def authenticate(self, tenant: str, token: str) -> Principal | None:
        """The principal of a live session token of ``tenant``; ``None`` for anything else
        (malformed, another tenant's, expired, revoked)."""
        if token_tenant(token) != tenant:
            return None
        hashed = token_hash(token)
        record = await self.cache.get(tenant, hashed)
        if record is None:
            record = await self.store.by_token(tenant, hashed)
            if record is None:
                return None
            # A removed user's sessions stay in the store until DISPATCH reaches them (later,
            # or much later with the broker down): they must not authenticate meanwhile.
            if await self.users.get(tenant, record.user_id) is None:
                return None
            await self.cache.put(record)
            if await self._gone(record) or await self.users.get(tenant, record.user_id) is None:
                await self.cache.evict([record])
                return None
        if not hmac.compare_digest(record.token_hash.encode(), hashed.encode()) or record.expired(
            utcnow()
        ):
            return None
        return Principal.of(record)

    async def is_user_token(self, token: str) -> bool:
        """Whether ``token`` is a live session token of its tenant (for 403 versus 401)."""
        tenant = token_tenant(token)
        return tenant is not None and await self.authenticate(tenant, token) is not None

    async def sessions_of(self, tenant: str, user_id: int) -> list[SessionRecord]:
        return await self.store.of_user(tenant, user_id)

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        return await self.store.get(tenant, session_id)

    async def revoke(self, tenant: str, session_ids: Sequence[str]) -> list[SessionRecord]:
        """Remove these sessions of ``tenant`` from the cache and the store; the ones
        that still existed. Revoking a revoked session is a no-op."""
        # Evict before the delete commits too: if the cache is unreachable the delete is undone,
        # so the caller's retry finds the sessions (and their hashes) again. One store
        # round-trip, not a read and then a delete.
        removed = await self.store.remove(tenant, session_ids, before_commit=self.cache.evict)
        await self.cache.evict(removed)
        if removed and self._listener is not None:
            try:
                await self._listener.revoked(removed)
            except Exception:  # a notice must never undo or fail a done revocation
                log.exception("could not announce %d revoked session(s)", len(removed))
        return removed

    async def revoke_one(self, tenant: str, session_id: str) -> bool:
        """Revoke one session of ``tenant``: whether it still existed. Concurrent calls of a
        tenant share one :meth:`revoke` (one store round-trip for all of them)."""
        return await self._singles.revoke_one(tenant, session_id)

    async def forget_user(self, tenant: str, user_id: int) -> int:
        """Evict a removed user's sessions from the cache now (their removal from the store is
        DISPATCH's work): how many were evicted. Cache misses then find the user gone."""
        records = await self.store.of_user(tenant, user_id)
        await self.cache.evict(records)
        return len(records)

    async def forget_sessions(self, tenant: str, user_id: int, session_ids: Sequence[str]) -> int:
        """Evict these sessions of a user from this manager's cache (a revocation another
        process did: its notice names the sessions, not their tokens); how many were cached."""
        wanted = set(session_ids)
        found = []
        for hashed in await self.cache.cached_for(tenant, user_id):
            record = await self.cache.get(tenant, hashed)
            if record is not None and record.id in wanted:
                found.append(record)
        await self.cache.evict(found)
        return len(found)

    async def _gone(self, record: SessionRecord) -> bool:
        return await self.store.get(record.tenant, record.id) is None


def _new_record(user: UserInfo, token: str, ttl: dt.timedelta) -> SessionRecord:
    # Millisecond precision: what MongoDB keeps, so both stores hand back the same values.
    now = utcnow()
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    return SessionRecord(
        id=new_session_id(),
        tenant=user.tenant,
        user_id=user.id,
        username=user.username,
        token_hash=token_hash(token),
        created_at=now,
        expires_at=now + ttl,
    )
