"""The sessions part against hostile input and clients (docs/security.md): one tenant pattern,
bad tenant rows that stop nothing, a login throttle that holds under concurrency, a removed
user's tokens refused at once, and DISPATCH reporting the real failure. Real broker, database
and Redis; the apps run in process behind httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import insert

from conftest import BrokerProbe
from fixtures.sessions import (
    admin,
    bearer,
    delete_redis_keys,
    sessions_app,
    sessions_settings_for,
)
from helpers import Eventually
from rabbitry import metrics
from rabbitry.app.http import create_app
from rabbitry.app.registry import lifespans, servers
from rabbitry.config import Settings
from rabbitry.messaging.consumer import Retry
from rabbitry.sessions.client import SessionClient
from rabbitry.sessions.dispatch import DispatchService, RemovalHandler
from rabbitry.sessions.manager import SessionManager
from rabbitry.sessions.models import Tenant
from rabbitry.sessions.removal import RemovalRequest
from rabbitry.sessions.sql_store import SqlSessionStore
from rabbitry.sessions.tenants import Tenants
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow
from rabbitry.web import AppState


@pytest.fixture
async def settings_redis(namespace: str, tmp_path: Path) -> AsyncIterator[Settings]:
    settings = sessions_settings_for(
        namespace, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", None
    )
    yield settings
    await delete_redis_keys(namespace)


async def new_tenant(client: httpx.AsyncClient, name: str) -> int:
    answer = await client.post("/api/tenants", json={"name": name}, headers=admin())
    assert answer.status_code == 201, answer.text
    user = await client.post(
        f"/api/tenants/{name}/users", json={"username": "ann", "password": "pw"}, headers=admin()
    )
    assert user.status_code == 201, user.text
    return int(user.json()["id"])


async def test_a_tenant_name_the_broker_would_refuse_is_refused_with_422_and_nothing_is_stored(
    settings_redis: Settings, broker: BrokerProbe
) -> None:
    async with sessions_app(settings_redis) as (app, client):
        for bad in ["-x", "-", "-acme", "x" * 64, "a_b", "A"]:
            refused = await client.post("/api/tenants", json={"name": bad}, headers=admin())
            assert refused.status_code == 422, bad
            assert refused.json()["error"] == "invalid request"
        database = AppState.of(app).database
        assert database is not None
        assert await Tenants(database).since() == []
        for good in ["x", "0", "a-", "a--b", "a" * 63]:
            made = await client.post("/api/tenants", json={"name": good}, headers=admin())
            assert made.status_code == 201, good


async def test_a_bad_tenant_row_left_by_an_older_version_is_skipped_and_counted_not_fatal(
    settings_redis: Settings, broker: BrokerProbe, eventually: Eventually
) -> None:
    settings = settings_redis
    async with Database(settings.sql_url) as db:
        await db.upgrade()
        async with db.session() as session:
            for name in ["-x", "good"]:
                await session.execute(insert(Tenant).values(name=name, created_at=utcnow()))
        assert [t.name for t in await Tenants(db).invalid()] == ["-x"]
        service = DispatchService(settings, db=db)
        stopping = asyncio.Event()
        task = asyncio.create_task(service.run(stopping))
        try:

            async def served() -> bool:
                return service.serves("good")

            await eventually(served, what="the good tenant served")
            assert not service.serves("-x")
            assert not task.done() and not stopping.is_set()
            assert metrics.REGISTRY.get_sample_value("rabbitry_invalid_tenants") == 1
        finally:
            stopping.set()
            await task


async def test_forty_concurrent_wrong_passwords_get_five_checks_and_the_rest_429(
    settings_redis: Settings, broker: BrokerProbe
) -> None:
    async with sessions_app(settings_redis) as (_, client):
        await new_tenant(client, "acme")

        async def guess(n: int) -> int:
            answer = await client.post(
                "/api/tenants/acme/sessions", json={"username": "ann", "password": f"no{n}"}
            )
            return answer.status_code

        codes = await asyncio.gather(*(guess(n) for n in range(40)))
        assert sorted(codes) == [401] * 5 + [429] * 35


async def test_the_in_process_throttle_holds_under_concurrency_and_caps_its_table(
    settings_redis: Settings, broker: BrokerProbe
) -> None:
    settings = settings_redis.model_copy(update={"redis_url": None})
    async with sessions_app(settings) as (_, client):
        await new_tenant(client, "acme")

        async def guess(n: int) -> int:
            answer = await client.post(
                "/api/tenants/acme/sessions", json={"username": "ann", "password": f"no{n}"}
            )
            return answer.status_code

        codes = await asyncio.gather(*(guess(n) for n in range(40)))
        assert sorted(codes) == [401] * 5 + [429] * 35

    from rabbitry.sessions.throttle import MemoryLoginThrottle

    throttle = MemoryLoginThrottle(max_failures=3, lockout=60, per_client=10**6, max_entries=100)
    for n in range(1000):
        await throttle.attempt("acme", f"user{n}", "10.0.0.1")
    assert len(throttle) <= 100


async def test_one_client_address_is_limited_across_usernames(
    settings_redis: Settings, broker: BrokerProbe
) -> None:
    settings = settings_redis.model_copy(update={"login_max_per_client": 8})
    async with sessions_app(settings) as (_, client):
        await new_tenant(client, "acme")
        codes = []
        for n in range(10):
            answer = await client.post(
                "/api/tenants/acme/sessions", json={"username": f"u{n}", "password": "x"}
            )
            codes.append(answer.status_code)
        assert codes == [401] * 8 + [429] * 2


async def test_a_lockout_ends_with_its_window_however_often_the_name_is_tried(
    settings_redis: Settings, broker: BrokerProbe, eventually: Eventually
) -> None:
    settings = settings_redis.model_copy(update={"login_max_failures": 2, "login_lockout": 1.0})
    async with sessions_app(settings) as (_, client):
        await new_tenant(client, "acme")
        wrong = {"username": "ann", "password": "no"}
        right = {"username": "ann", "password": "pw"}
        for _ in range(2):
            await client.post("/api/tenants/acme/sessions", json=wrong)

        # An attacker keeps hammering the name; the owner still gets in once the window that
        # began with the first failure is over (the hammering does not extend it).
        async def owner_in() -> bool:
            await client.post("/api/tenants/acme/sessions", json=wrong)
            answer = await client.post("/api/tenants/acme/sessions", json=right)
            return answer.status_code == 201

        await eventually(owner_in, what="the owner logged in after the window", timeout=10)


async def test_a_removed_users_token_stops_working_at_once_even_with_the_broker_off(
    settings_redis: Settings, broker: BrokerProbe
) -> None:
    settings = settings_redis.model_copy(update={"rabbit_active": False})
    async with sessions_app(settings) as (app, client):
        user_id = await new_tenant(client, "acme")
        login = await client.post(
            "/api/tenants/acme/sessions", json={"username": "ann", "password": "pw"}
        )
        token = login.json()["token"]
        me = await client.get("/api/tenants/acme/sessions/me", headers=bearer(token))
        assert me.status_code == 200  # now cached
        removed = await client.delete(f"/api/tenants/acme/users/{user_id}", headers=admin())
        assert removed.status_code == 202
        # DISPATCH has not run (no broker): the session is still in the store.
        assert await AppState.of(app).get(SessionManager).store.of_user("acme", user_id)
        after = await client.get("/api/tenants/acme/sessions/me", headers=bearer(token))
        assert after.status_code == 401


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_dispatch_reports_session_being_unreachable_not_an_exception_group(
    settings_redis: Settings,
) -> None:
    async with Database(settings_redis.sql_url) as db:
        await db.upgrade()
        async with db.session() as session:
            await session.execute(insert(Tenant).values(name="acme", created_at=utcnow()))
        store = SqlSessionStore(db)
        from fixtures.sessions import session_record

        for _ in range(3):
            await store.add(session_record("acme", 7))
        client = SessionClient(f"http://127.0.0.1:{_closed_port()}", "t", timeout=2, batch=False)
        try:
            handler = RemovalHandler("acme", store, client)
            with pytest.raises(Retry) as caught:
                await handler(RemovalRequest("acme", 7).message())
        finally:
            await client.close()
        assert caught.value.reason.startswith("3 of 3 deletes failed: SESSION unreachable")


async def test_a_revoked_token_is_evicted_from_a_separate_chat_processs_own_cache(
    settings_redis: Settings, broker: BrokerProbe, eventually: Eventually
) -> None:
    # `serve chat` in a process of its own, without Redis: its session cache is its own.
    settings = settings_redis.model_copy(update={"redis_url": None})
    chat = create_app(settings, routers=servers()["chat"], lifespans=lifespans("chat"))
    async with sessions_app(settings) as (_, users), chat.router.lifespan_context(chat):
        transport = httpx.ASGITransport(app=chat)
        async with httpx.AsyncClient(transport=transport, base_url="http://chat") as client:
            await new_tenant(users, "acme")
            login = await users.post(
                "/api/tenants/acme/sessions", json={"username": "ann", "password": "pw"}
            )
            token = login.json()["token"]

            async def history() -> int:
                answer = await client.get(
                    "/api/chat/rooms/lobby/messages",
                    params={"tenant": "acme"},
                    headers=bearer(token),
                )
                return answer.status_code

            assert await history() == 200  # the chat process has cached the session now
            out = await users.delete("/api/tenants/acme/sessions/me", headers=bearer(token))
            assert out.json() == {"removed": 1}

            async def refused() -> bool:
                return await history() == 401

            await eventually(refused, what="the chat process refusing the revoked token")
