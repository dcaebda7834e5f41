"""USER and SESSION over HTTP, in process, on the real broker, database and Redis: credentials
(401/403), login answers and throttling, the cache, and tenant isolation on every route."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import BrokerProbe
from fixtures.sessions import (
    SERVICE,
    admin,
    bearer,
    delete_redis_keys,
    redis_keys,
    sessions_app,
    sessions_settings_for,
)
from rabbitry.app.http import create_app
from rabbitry.app.registry import all_routers, lifespans
from rabbitry.config import Settings
from rabbitry.sessions.topology import TenantsLayout


@pytest.fixture
async def sqlite_settings(namespace: str, tmp_path: Path) -> AsyncIterator[Settings]:
    settings = sessions_settings_for(
        namespace, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}", None, login_max_failures=3
    )
    yield settings
    await delete_redis_keys(namespace)


async def make_tenant(client: httpx.AsyncClient, name: str, users: int = 1) -> list[int]:
    assert (
        await client.post("/api/tenants", json={"name": name}, headers=admin())
    ).status_code == 201
    ids = []
    for i in range(users):
        answer = await client.post(
            f"/api/tenants/{name}/users",
            json={"username": f"user{i}", "password": f"pw{i}"},
            headers=admin(),
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    return ids


async def login(client: httpx.AsyncClient, tenant: str, user: int = 0) -> dict[str, str]:
    answer = await client.post(
        f"/api/tenants/{tenant}/sessions", json={"username": f"user{user}", "password": f"pw{user}"}
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


async def test_tenant_names_are_validated_and_a_duplicate_is_refused_with_409(
    sqlite_settings: Settings, broker: BrokerProbe
) -> None:
    async with sessions_app(sqlite_settings) as (_, client):
        created = await client.post("/api/tenants", json={"name": "acme-1"}, headers=admin())
        assert created.status_code == 201
        assert created.json() == {"name": "acme-1", "queue_declared": True}
        queue = TenantsLayout(sqlite_settings.namespace).tenant_queue("acme-1")
        assert await broker.counts(queue) == (0, 0)
        again = await client.post("/api/tenants", json={"name": "acme-1"}, headers=admin())
        assert (again.status_code, again.json()) == (
            409,
            {"error": "tenant 'acme-1' exists already"},
        )
        for bad in ["Acme", "a_b", "a.b", "", "x" * 64, "a b", "ä"]:
            refused = await client.post("/api/tenants", json={"name": bad}, headers=admin())
            assert refused.status_code == 422, bad
            assert "error" in refused.json()


async def test_admin_routes_answer_401_without_or_with_a_wrong_token_and_403_to_a_user_token(
    sqlite_settings: Settings, broker: BrokerProbe
) -> None:
    app = create_app(sqlite_settings, routers=all_routers(), lifespans=lifespans())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            (user_id,) = await make_tenant(client, "acme")
            token = (await login(client, "acme"))["token"]
            routes = [
                ("POST", "/api/tenants", {"name": "other"}),
                ("POST", "/api/tenants/acme/users", {"username": "x", "password": "y"}),
                ("DELETE", f"/api/tenants/acme/users/{user_id}", None),
                ("GET", f"/api/tenants/acme/users/{user_id}/sessions", None),
                ("GET", "/api/events/App%5COrder/1", None),
            ]
            for method, path, body in routes:
                for headers, status in [
                    ({}, 401),
                    (bearer("wrong"), 401),
                    ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
                    (bearer(SERVICE), 401),
                    (bearer(token), 403),
                ]:
                    answer = await client.request(method, path, json=body, headers=headers)
                    assert answer.status_code == status, (method, path, headers)
                    assert answer.json()["error"]
            # sessions/me wants a user token: the admin's is authenticated but not a user.
            me = await client.get("/api/tenants/acme/sessions/me", headers=admin())
            assert me.status_code == 403
            assert (await client.get("/api/tenants/acme/sessions/me")).status_code == 401
            # The user is still there: none of the refused calls did anything.
            assert (
                await client.get("/api/tenants/acme/sessions/me", headers=bearer(token))
            ).status_code == 200


async def test_an_unknown_user_and_a_wrong_password_get_the_same_answer_then_are_throttled(
    sqlite_settings: Settings, broker: BrokerProbe
) -> None:
    async with sessions_app(sqlite_settings) as (_, client):
        await make_tenant(client, "acme")
        answers = []
        for username, password in [("user0", "nope"), ("ghost", "pw0")]:
            answer = await client.post(
                "/api/tenants/acme/sessions", json={"username": username, "password": password}
            )
            answers.append((answer.status_code, answer.json()))
        assert answers[0] == answers[1] == (401, {"error": "wrong username or password"})
        for _ in range(2):  # login_max_failures=3: the third failure locks the name out
            await client.post(
                "/api/tenants/acme/sessions", json={"username": "user0", "password": "nope"}
            )
        locked = await client.post(
            "/api/tenants/acme/sessions", json={"username": "user0", "password": "pw0"}
        )
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
        # Another username of the tenant is not affected.
        assert (
            await client.post(
                "/api/tenants/acme/sessions", json={"username": "ghost", "password": "x"}
            )
        ).status_code == 401


async def test_a_session_validates_until_it_is_deleted_and_deleting_it_twice_is_harmless(
    sqlite_settings: Settings, broker: BrokerProbe
) -> None:
    namespace = sqlite_settings.namespace
    async with sessions_app(sqlite_settings) as (_, client):
        (user_id,) = await make_tenant(client, "acme")
        session = await login(client, "acme")
        me = await client.get("/api/tenants/acme/sessions/me", headers=bearer(session["token"]))
        assert me.status_code == 200
        assert me.json()["user_id"] == user_id and me.json()["username"] == "user0"
        assert any(":session:acme:" in k for k in await redis_keys(namespace))
        listed = await client.get(f"/api/tenants/acme/users/{user_id}/sessions", headers=admin())
        assert [s["session_id"] for s in listed.json()["sessions"]] == [session["session_id"]]
        assert "token" not in json.dumps(listed.json())
        path = f"/api/tenants/acme/sessions/{session['session_id']}"
        assert (await client.delete(path, headers=bearer(SERVICE))).json() == {"removed": 1}
        assert (await client.delete(path, headers=admin())).json() == {"removed": 0}
        gone = await client.get("/api/tenants/acme/sessions/me", headers=bearer(session["token"]))
        assert gone.status_code == 401
        assert await redis_keys(namespace) == []


async def test_no_route_of_one_tenant_reads_validates_or_removes_another_tenants_data(
    sessions_settings: Settings, broker: BrokerProbe
) -> None:
    async with sessions_app(sessions_settings) as (_, client):
        (a_user,) = await make_tenant(client, "tenant-a")
        (b_user,) = await make_tenant(client, "tenant-b")
        a = await login(client, "tenant-a")
        b = await login(client, "tenant-b")
        # A's token on B's routes: not valid there.
        assert (
            await client.get("/api/tenants/tenant-b/sessions/me", headers=bearer(a["token"]))
        ).status_code == 401
        assert (
            await client.delete("/api/tenants/tenant-b/sessions/me", headers=bearer(a["token"]))
        ).status_code == 401
        # A's user logging in through B (same username and password): refused.
        wrong_tenant = await client.post(
            "/api/tenants/tenant-b/sessions", json={"username": "user0", "password": "pw0"}
        )
        assert wrong_tenant.status_code == 201  # B has its own user0 with that password...
        assert wrong_tenant.json()["token"].startswith("tenant-b.")  # ...and gets B's session
        # Admin routes through B never see or touch A's user and sessions.
        listed = await client.get(f"/api/tenants/tenant-b/users/{a_user}/sessions", headers=admin())
        assert listed.status_code == 200 and listed.json()["sessions"] == []
        deleted = await client.delete(
            f"/api/tenants/tenant-b/sessions/{a['session_id']}", headers=admin()
        )
        assert deleted.json() == {"removed": 0}
        batch = await client.post(
            "/api/tenants/tenant-b/sessions/revocations",
            json={"session_ids": [a["session_id"]]},
            headers=bearer(SERVICE),
        )
        assert batch.json() == {"removed": 0}
        removed = await client.delete(f"/api/tenants/tenant-b/users/{a_user}", headers=admin())
        assert removed.status_code == 404  # no such user in tenant B
        # Everything of A still works; B's session too.
        assert (
            await client.get("/api/tenants/tenant-a/sessions/me", headers=bearer(a["token"]))
        ).status_code == 200
        assert (
            await client.get("/api/tenants/tenant-b/sessions/me", headers=bearer(b["token"]))
        ).status_code == 200
        again = await client.post(
            "/api/tenants/tenant-a/sessions", json={"username": "user0", "password": "pw0"}
        )
        assert again.status_code == 201
        assert b_user != a_user
        # A token altered to name another tenant is refused too.
        forged = "tenant-b." + a["token"].split(".", 1)[1]
        assert (
            await client.get("/api/tenants/tenant-b/sessions/me", headers=bearer(forged))
        ).status_code == 401
        unknown = await client.get("/api/tenants/nope/users/1/sessions", headers=admin())
        assert unknown.status_code == 404


async def test_removing_a_user_answers_202_and_enqueues_the_request_on_the_tenants_queue(
    sqlite_settings: Settings, broker: BrokerProbe
) -> None:
    layout = TenantsLayout(sqlite_settings.namespace)
    async with sessions_app(sqlite_settings) as (_, client):
        (user_id,) = await make_tenant(client, "acme")
        await login(client, "acme")
        answer = await client.delete(f"/api/tenants/acme/users/{user_id}", headers=admin())
        assert answer.status_code == 202
        assert answer.json() == {
            "tenant": "acme",
            "user_id": user_id,
            "removed": True,
            "request": "published",
        }
        refused = await client.post(
            "/api/tenants/acme/sessions", json={"username": "user0", "password": "pw0"}
        )
        assert refused.status_code == 401
    (request,) = await broker.get_all(layout.tenant_queue("acme"))
    assert request.headers["rr_job"] == "session-removal"
    assert request.headers["x-tenant"] == "acme"
    assert request.routing_key == "acme.session-removal"
    assert request.exchange == layout.tenants_exchange
    assert json.loads(request.body) == {"tenant": "acme", "user_id": user_id}


async def test_tenants_and_users_are_listed_a_page_at_a_time(
    sqlite_settings: Settings, broker: BrokerProbe
) -> None:
    async with sessions_app(sqlite_settings) as (_, client):
        for name in ("t-a", "t-b", "t-c"):
            await make_tenant(client, name, users=0)
        ids = await make_tenant(client, "t-d", users=5)

        async def walk(path: str, key: str, limit: int) -> list[list[dict[str, Any]]]:
            pages: list[list[dict[str, Any]]] = []
            after = 0
            while True:
                got = await client.get(
                    path, params={"limit": limit, "after": after}, headers=admin()
                )
                assert got.status_code == 200, got.text
                pages.append(got.json()[key])
                if got.json()["next"] is None:
                    return pages
                after = got.json()["next"]

        tenants = await walk("/api/tenants", "tenants", 2)
        assert [[t["name"] for t in page] for page in tenants] == [["t-a", "t-b"], ["t-c", "t-d"]]
        users = await walk("/api/tenants/t-d/users", "users", 2)
        assert [len(page) for page in users] == [2, 2, 1]
        assert [u["id"] for page in users for u in page] == ids
        assert set(users[0][0]) == {"id", "username"}  # never a password hash

        assert (await client.get("/api/tenants/nobody/users", headers=admin())).status_code == 404
        for bad in ({"limit": 0}, {"limit": 501}, {"after": -1}, {"after": "x"}):
            refused = await client.get("/api/tenants", params=bad, headers=admin())
            assert refused.status_code == 422 and "error" in refused.json(), bad
        assert (await client.get("/api/tenants")).status_code == 401
        missing = await client.delete(f"/api/tenants/t-a/users/{ids[0]}", headers=admin())
        assert (missing.status_code, missing.json()) == (
            404,
            {"error": f"no user {ids[0]} in tenant 't-a'"},
        )
