"""Reading the event store: ``rabbitry events history|state`` and the HTTP API, on SQLite and
PostgreSQL, as a user calls them (the real command in a subprocess, the real app over ASGI)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os

import httpx

from helpers import RABBITRY
from rabbitry.app.http import create_app
from rabbitry.app.registry import all_routers
from rabbitry.config import Settings
from rabbitry.events.change import ChangeEvent, ChangeType
from rabbitry.events.store import EventStore, Incoming
from rabbitry.storage.database import Database
from rabbitry.web import AppState

ENTITY = "App\\Models\\Order"
T0 = dt.datetime(2025, 2, 6, 12, 0, tzinfo=dt.UTC)


async def seed(database: Database) -> None:
    def at(minutes: int) -> dt.datetime:
        return T0 + dt.timedelta(minutes=minutes)

    await EventStore(database).append(
        [
            Incoming(ChangeEvent(ChangeType.INSERT, ENTITY, 7, 1, {"total": 10}), "m1", at(0)),
            Incoming(ChangeEvent(ChangeType.UPDATE, ENTITY, 7, 2, {"total": 12}), "m2", at(10)),
            Incoming(ChangeEvent(ChangeType.DELETE, ENTITY, 7, "system"), "m3", at(20)),
        ]
    )


async def rabbitry(database_url: str, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "RABBITRY_DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        RABBITRY,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_prints_history_as_json_lines_and_state_at_a_time(
    events_db: Database, events_db_url: str
) -> None:
    await seed(events_db)
    code, out, _ = await rabbitry(events_db_url, "events", "history", ENTITY, "7")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["version"], e["type"], e["user"], e["data"]) for e in lines] == [
        (1, "insert", 1, {"total": 10}),
        (2, "update", 2, {"total": 12}),
        (3, "delete", "system", None),
    ]
    assert lines[0]["occurred_at"] == T0.isoformat() and lines[0]["message_id"] == "m1"

    code, out, _ = await rabbitry(
        events_db_url, "events", "state", ENTITY, "7", "--at", "2025-02-06 12:15:00"
    )
    assert code == 0
    assert json.loads(out) == {
        "entity": ENTITY,
        "id": 7,
        "version": 2,
        "deleted": False,
        "data": {"total": 12},
        "updated_at": (T0 + dt.timedelta(minutes=10)).isoformat(),
        "updated_by": 2,
    }
    code, out, _ = await rabbitry(events_db_url, "events", "state", ENTITY, "7")
    assert code == 0 and json.loads(out)["deleted"] is True


async def test_cli_refuses_bad_input_in_one_line_and_reports_unknown_entities(
    events_db: Database, events_db_url: str
) -> None:
    await seed(events_db)
    for args, code, message in [
        (("history", ENTITY, "seven"), 2, "ID must be an integer, got 'seven'"),
        (("state", ENTITY, "7", "--at", "yesterday"), 2, "--at: invalid time 'yesterday'"),
        (("history", " ", "7"), 2, "ENTITY must not be empty"),
        (("history", ENTITY, "8"), 1, f"no events for {ENTITY} 8"),
        (("state", ENTITY, "7", "--at", "2025-02-06T11:00:00Z"), 1, "at or before"),
    ]:
        got, out, err = await rabbitry(events_db_url, "events", *args)
        assert (got, out) == (code, ""), args
        assert len(err.strip().splitlines()) == 1 and message in err, err


async def test_http_api_returns_history_state_and_json_errors(events_db: Database) -> None:
    await seed(events_db)
    app = create_app(
        Settings(namespace="unused", admin_token="admin-token-for-tests"), routers=all_routers()
    )
    AppState.of(app).database = events_db  # what the lifespan sets; no broker needed here
    transport = httpx.ASGITransport(app=app)
    admin = {"Authorization": "Bearer admin-token-for-tests"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://rabbitry", headers=admin
    ) as client:
        path = "/api/events/App%5CModels%5COrder/7"
        response = await client.get(path)
        assert response.status_code == 200
        body = response.json()
        assert (body["entity"], body["id"]) == (ENTITY, 7)
        assert [e["version"] for e in body["events"]] == [1, 2, 3]

        response = await client.get(f"{path}/state", params={"at": "2025-02-06T12:05:00Z"})
        assert response.status_code == 200
        assert response.json()["data"] == {"total": 10}
        assert (await client.get(f"{path}/state")).json()["deleted"] is True

        for url, params, status in [
            ("/api/events/App%5CModels%5COrder/8", {}, 404),
            ("/api/events/App%5CModels%5COrder/8/state", {}, 404),
            (f"{path}/state", {"at": "2025-01-01"}, 404),
            (f"{path}/state", {"at": "soon"}, 400),
            ("/api/events/App%5CModels%5COrder/seven", {}, 422),
            ("/api/events/App%5CModels%5COrder/99999999999999999999", {}, 422),
        ]:
            response = await client.get(url, params=params)
            assert response.status_code == status, url
            assert response.headers["content-type"] == "application/json"
            assert response.json()
