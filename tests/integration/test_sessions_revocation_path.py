"""DISPATCH → SESSION, the per-session path (issue 20, item 4): DISPATCH's client finds the batch
call by itself and falls back to one DELETE per session on a SESSION without it; it bounds the
requests in flight for the whole process and reuses its connections; a failed session sends the
removal request back for a retry, which removes the rest; SESSION groups concurrent single
DELETEs of a tenant into one store round-trip, and a cache it cannot reach undoes the delete.

SESSION is the real app on every store (the ``sessions_settings`` fixture), reached in process
through an ASGI wrapper that records (and, where a test says so, fails) requests. The bound and
the connections are counted on a test double served by uvicorn on a real port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import APIRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from conftest import BrokerProbe
from fixtures.sessions import SERVICE, session_record
from helpers import free_port, serving_on
from rabbitry.app.http import create_app
from rabbitry.app.registry import lifespans, servers
from rabbitry.config import Settings
from rabbitry.errors import StorageError
from rabbitry.messaging.consumer import Retry
from rabbitry.sessions.client import SessionClient, SessionServiceError
from rabbitry.sessions.dispatch import RemovalHandler
from rabbitry.sessions.manager import SessionManager
from rabbitry.sessions.removal import RemovalRequest
from rabbitry.sessions.store import BeforeCommit, SessionRecord, SessionStore
from rabbitry.web import AppState

BATCH_ROUTE = "/api/tenants/{tenant}/sessions/revocations"


@dataclass
class Recorder:
    """An ASGI app in front of SESSION: records (method, path) of every request, and answers
    500 instead of SESSION to the first request whose path ends with ``fail_once``."""

    app: ASGIApp
    fail_once: str | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.requests.append((scope["method"], scope["path"]))
            if self.fail_once is not None and scope["path"].endswith(self.fail_once):
                self.fail_once = None
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b'{"error": "injected"}'})
                return
        await self.app(scope, receive, send)

    def of(self, method: str) -> list[str]:
        return [path for m, path in self.requests if m == method]


def session_routers(*, batch: bool) -> list[APIRouter]:
    """SESSION's routers; without the batch route, as a SESSION of before it had it."""
    routers = servers()["session"]
    if batch:
        return routers
    trimmed = APIRouter()
    for router in routers:
        trimmed.routes.extend(r for r in router.routes if getattr(r, "path", "") != BATCH_ROUTE)
    return [trimmed]


@asynccontextmanager
async def session_service(
    settings: Settings, *, batch: bool = True
) -> AsyncIterator[tuple[SessionManager, Recorder]]:
    """SESSION in this process (its own lifespan: store, Redis cache, publisher)."""
    app = create_app(settings, routers=session_routers(batch=batch), lifespans=lifespans("session"))
    async with app.router.lifespan_context(app):
        yield AppState.of(app).get(SessionManager), Recorder(app)


def client_of(
    recorder: Recorder, *, batch: bool | None = None, rediscover_after: float = 300.0
) -> SessionClient:
    return SessionClient(
        "http://session",
        SERVICE,
        batch=batch,
        rediscover_after=rediscover_after,
        transport=httpx.ASGITransport(app=recorder),
    )


async def sessions_of(manager: SessionManager, tenant: str, user_id: int, n: int) -> list[str]:
    """``n`` sessions of a user, in the store and in the cache, as logins leave them."""
    records = [session_record(tenant, user_id) for _ in range(n)]
    for record in records:
        await manager.store.add(record)
        await manager.cache.put(record)
    return [r.id for r in records]


async def assert_gone(manager: SessionManager, tenant: str, user_id: int) -> None:
    assert await manager.store.of_user(tenant, user_id) == []
    assert await manager.cache.cached_for(tenant, user_id) == []


# --- the batch call, found or not --------------------------------------------------------------


async def test_dispatch_finds_the_batch_call_and_removes_every_session_with_it(
    sessions_settings: Settings, broker: BrokerProbe
) -> None:
    async with session_service(sessions_settings) as (manager, recorder):
        await sessions_of(manager, "acme", 1, 7)
        bystander = await sessions_of(manager, "acme", 2, 2)
        client = client_of(recorder)
        try:
            await RemovalHandler("acme", manager.store, client)(RemovalRequest("acme", 1).message())
        finally:
            await client.close()
        await assert_gone(manager, "acme", 1)
        assert sorted(r.id for r in await manager.store.of_user("acme", 2)) == sorted(bystander)

    assert recorder.of("POST") == ["/api/tenants/acme/sessions/revocations"]
    assert recorder.of("DELETE") == []


async def test_on_a_session_without_the_batch_call_dispatch_deletes_each_session_and_remembers(
    sessions_settings: Settings, broker: BrokerProbe
) -> None:
    async with session_service(sessions_settings, batch=False) as (manager, recorder):
        first = await sessions_of(manager, "acme", 1, 5)
        second = await sessions_of(manager, "acme", 2, 3)
        client = client_of(recorder)
        try:
            assert await client.revoke_all("acme", first) == 5
            assert not client.uses_batch
            assert await client.revoke_all("acme", second) == 3
        finally:
            await client.close()
        await assert_gone(manager, "acme", 1)
        await assert_gone(manager, "acme", 2)

    # One refused batch call (405: the path is the per-session DELETE's), then DELETEs only.
    assert recorder.of("POST") == ["/api/tenants/acme/sessions/revocations"]
    assert sorted(recorder.of("DELETE")) == sorted(
        f"/api/tenants/acme/sessions/{sid}" for sid in first + second
    )


async def test_dispatch_tries_the_batch_call_again_once_the_fallback_has_lasted_its_time(
    sessions_settings: Settings, broker: BrokerProbe
) -> None:
    async with session_service(sessions_settings, batch=False) as (manager, recorder):
        ids = await sessions_of(manager, "acme", 1, 2)
        client = client_of(recorder, rediscover_after=0.0)
        try:
            await client.revoke_all("acme", ids[:1])
            await client.revoke_all("acme", ids[1:])
        finally:
            await client.close()

    assert len(recorder.of("POST")) == 2  # a SESSION upgraded meanwhile would get it


async def test_told_to_use_the_batch_call_dispatch_reports_a_session_without_it(
    sessions_settings: Settings, broker: BrokerProbe
) -> None:
    async with session_service(sessions_settings, batch=False) as (manager, recorder):
        ids = await sessions_of(manager, "acme", 1, 2)
        client = client_of(recorder, batch=True)
        try:
            with pytest.raises(SessionServiceError, match="405"):
                await client.revoke_all("acme", ids)
        finally:
            await client.close()
        assert len(await manager.store.of_user("acme", 1)) == 2
    assert recorder.of("DELETE") == []


# --- a failure on one session ------------------------------------------------------------------


@pytest.mark.parametrize("batch", [False, None], ids=["per-session", "batch"])
async def test_a_session_that_fails_sends_the_request_back_and_the_retry_removes_the_rest(
    sessions_settings: Settings, broker: BrokerProbe, batch: bool | None
) -> None:
    async with session_service(sessions_settings) as (manager, recorder):
        ids = await sessions_of(manager, "acme", 1, 6)
        recorder.fail_once = "/revocations" if batch is None else ids[3]
        client = client_of(recorder, batch=batch)
        handler = RemovalHandler("acme", manager.store, client)
        try:
            with pytest.raises(Retry) as caught:
                await handler(RemovalRequest("acme", 1).message())
            assert "SESSION answered 500" in caught.value.reason
            if batch is False:  # no new DELETE starts after a failure; those in flight end
                assert caught.value.reason.startswith("1 of ")
                assert ids[3] in [r.id for r in await manager.store.of_user("acme", 1)]
            await handler(RemovalRequest("acme", 1).message())  # the redelivery
        finally:
            await client.close()
        await assert_gone(manager, "acme", 1)


# --- the bound and the connections -------------------------------------------------------------


@dataclass
class CountingSession:
    """A test double of SESSION's per-session DELETE (no batch route): counts the requests in
    flight and the connections they came on. Each request is held until ``bound`` are in
    flight (or a while has passed), so a client that allows ``bound`` reaches it for sure."""

    bound: int
    in_flight: int = 0
    most: int = 0
    served: int = 0
    connections: set[int] = field(default_factory=set)
    full: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "DELETE":
            await _answer(send, 405, {"error": "method not allowed"})
            return
        self.connections.add(scope["client"][1])
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        if self.in_flight >= self.bound:
            self.full.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.full.wait(), timeout=2)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        self.served += 1
        await _answer(send, 200, {"removed": 1})


async def _answer(send: Send, status: int, body: object) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    port = free_port()
    async with serving_on(app, port, lifespan="off"):
        yield f"http://127.0.0.1:{port}"


async def test_one_client_bounds_every_tenants_requests_and_reuses_its_connections() -> None:
    session = CountingSession(bound=4)
    async with serving(session) as url:
        client = SessionClient(url, SERVICE, concurrency=4, timeout=30)
        try:
            ids: Sequence[str] = [f"{i:032x}" for i in range(25)]
            removed = await asyncio.gather(
                *(client.revoke_all(tenant, ids) for tenant in ("acme", "globex", "initech"))
            )
        finally:
            await client.close()

    assert removed == [25, 25, 25]
    assert session.served == 75
    assert session.most == 4  # three tenants at once, four requests in flight at most
    assert len(session.connections) <= 4  # 75 requests on the pool's kept-alive connections


# --- SESSION: single DELETEs grouped, a cache failure undoes the delete -----------------------


class CountingStore:
    """The real store, counting the calls to :meth:`remove` (everything else passes through)."""

    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self.removes: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def remove(
        self, tenant: str, session_ids: Sequence[str], *, before_commit: BeforeCommit | None = None
    ) -> list[SessionRecord]:
        self.removes.append(len(session_ids))
        return await self._store.remove(tenant, session_ids, before_commit=before_commit)


async def test_concurrent_single_revocations_share_one_store_call_and_each_learns_its_outcome(
    sessions_settings: Settings, broker: BrokerProbe
) -> None:
    async with session_service(sessions_settings) as (manager, _):
        ids = await sessions_of(manager, "acme", 1, 10)
        other = await sessions_of(manager, "globex", 1, 3)
        counting = CountingStore(manager.store)
        manager.store = counting  # type: ignore[assignment]
        unknown = "f" * 32
        asked = [*ids, ids[0], unknown, *other]
        outcomes = await asyncio.gather(
            *(manager.revoke_one("globex" if sid in other else "acme", sid) for sid in asked)
        )
        manager.store = counting._store
        await assert_gone(manager, "acme", 1)
        await assert_gone(manager, "globex", 1)

    # The second DELETE of a session finds it gone, as does the DELETE of an unknown one.
    assert outcomes == [True] * 10 + [False, False] + [True] * 3
    assert sorted(counting.removes) == [3, 12]  # one store call per tenant


class UnreachableEviction:
    """The real cache, but evicting fails as it does with Redis down."""

    def __init__(self, cache: object) -> None:
        self._cache = cache

    def __getattr__(self, name: str) -> object:
        return getattr(self._cache, name)

    async def evict(self, records: Sequence[SessionRecord]) -> None:
        raise StorageError("Redis: cannot evict sessions: injected")


async def test_a_revocation_whose_cache_eviction_fails_deletes_nothing_and_fails_every_caller(
    sessions_settings: Settings, broker: BrokerProbe
) -> None:
    async with session_service(sessions_settings) as (manager, _):
        ids = await sessions_of(manager, "acme", 1, 4)
        cache = manager.cache
        manager.cache = UnreachableEviction(cache)  # type: ignore[assignment]
        try:
            outcomes = await asyncio.gather(
                *(manager.revoke_one("acme", sid) for sid in ids), return_exceptions=True
            )
        finally:
            manager.cache = cache
        # Still in the store: DISPATCH's retry finds them, and their hashes, again.
        assert sorted(r.id for r in await manager.store.of_user("acme", 1)) == sorted(ids)

    assert all(isinstance(o, StorageError) for o in outcomes)
