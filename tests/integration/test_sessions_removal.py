"""A user's removal, end to end in one process over real HTTP: the ``delete`` change event USER
emits, and DISPATCH removing every session through SESSION: in batches, the call SESSION offers
(unset ``RABBITRY_DISPATCH_BATCH``, or ``true``), or one call per session (``false``).

USER, SESSION and DISPATCH run in one app served by uvicorn on a local port, because DISPATCH
calls SESSION over HTTP (``RABBITRY_SESSION_URL``); a pass-through ASGI wrapper records the
requests SESSION answers, so the test sees which form DISPATCH used.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conftest import BrokerProbe
from fixtures.sessions import (
    admin,
    bearer,
    delete_redis_keys,
    serving,
    sessions_settings_for,
    user_with_sessions,
)
from helpers import eventually_true, free_port
from rabbitry.config import Settings

SESSIONS = 7


@pytest.fixture(params=[None, False, True], ids=["discovered", "one-by-one", "batch"])
async def removal_settings(
    request: pytest.FixtureRequest, namespace: str, tmp_path: Path, broker: BrokerProbe
) -> AsyncIterator[Settings]:
    settings = sessions_settings_for(
        namespace,
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        None,
        session_url=f"http://127.0.0.1:{free_port()}",
        dispatch_batch=request.param,
    )
    try:
        yield settings
    finally:
        await delete_redis_keys(namespace)


async def test_dispatch_removes_every_session_of_a_removed_user_in_the_configured_form(
    removal_settings: Settings, broker: BrokerProbe
) -> None:
    async with serving(removal_settings) as (client, recorder):
        assert (
            await client.post("/api/tenants", json={"name": "acme"}, headers=admin())
        ).status_code == 201
        _, ann = await user_with_sessions(client, "acme", "ann", SESSIONS)
        _, bob = await user_with_sessions(client, "acme", "bob", SESSIONS)
        ann_id = (await client.get("/api/tenants/acme/sessions/me", headers=bearer(ann[0]))).json()[
            "user_id"
        ]
        removed = await client.delete(f"/api/tenants/acme/users/{ann_id}", headers=admin())
        assert removed.status_code == 202, removed.text

        async def all_revoked() -> bool:
            for token in ann:
                me = await client.get("/api/tenants/acme/sessions/me", headers=bearer(token))
                if me.status_code != 401:
                    return False
            return True

        await eventually_true(all_revoked, timeout=60, what="every session of ann revoked")
        for token in bob:
            me = await client.get("/api/tenants/acme/sessions/me", headers=bearer(token))
            assert me.status_code == 200

    batches = [
        r for r in recorder.requests if r == ("POST", "/api/tenants/acme/sessions/revocations")
    ]
    singles = [
        r
        for r in recorder.requests
        if r[0] == "DELETE" and r[1].startswith("/api/tenants/acme/sessions/")
    ]
    if removal_settings.dispatch_batch is not False:
        assert (len(batches), singles) == (1, [])
    else:
        assert (batches, len(singles)) == ([], SESSIONS)


async def test_removing_a_user_emits_one_delete_change_event_saying_who_and_where(
    removal_settings: Settings, broker: BrokerProbe
) -> None:
    queue = f"{removal_settings.namespace}.event-sourcing.p0"
    async with serving(removal_settings) as (client, _):
        assert (
            await client.post("/api/tenants", json={"name": "acme"}, headers=admin())
        ).status_code == 201
        made = await client.post(
            "/api/tenants/acme/users", json={"username": "ann", "password": "pw"}, headers=admin()
        )
        user_id = made.json()["id"]
        await broker.get_all(queue)  # whatever the creation emitted: not this test's subject
        first = await client.delete(f"/api/tenants/acme/users/{user_id}", headers=admin())
        again = await client.delete(f"/api/tenants/acme/users/{user_id}", headers=admin())

    assert (first.status_code, first.json()["removed"]) == (202, True)
    assert again.status_code == 404
    assert again.json() == {"error": f"no user {user_id} in tenant 'acme'"}
    (event,) = await broker.get_all(queue)  # the second DELETE removed nobody: no event
    assert event.headers["rr_job"] == "delete"
    assert json.loads(event.body) == {
        "entity": "rabbitry.sessions.User",
        "id": user_id,
        "user": "system",
        "data": {"tenant": "acme", "username": "ann", "removed_by": "admin"},
    }
