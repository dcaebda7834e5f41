"""The HTTP surfaces against hostile clients (docs/security.md): the admin token's minimum, the
back-office's login throttle, logout and id bounds, what /healthz and /metrics show to anyone,
the chat page's headers and the log redaction of tokens, and a back-office requeue that does not
inherit the app publisher's open circuit. Real broker and database; apps in process."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr, ValidationError

from conftest import BrokerProbe, Endpoint
from helpers import Eventually, scratch_database
from rabbitry import metrics
from rabbitry.app.http import create_app
from rabbitry.app.registry import all_routers
from rabbitry.backoffice import http as backoffice_http
from rabbitry.backoffice.auth import COOKIE, Session, Signer
from rabbitry.backoffice.jobs import Jobs
from rabbitry.backoffice.logouts import Logouts
from rabbitry.chat.http import redact_tokens
from rabbitry.config import Settings
from rabbitry.messaging import Topology, work_queue
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import PublishStatus, Route
from rabbitry.storage import Database
from rabbitry.storage.listing import int64
from rabbitry.web import AppState

TOKEN = "security-test-admin-token"


@asynccontextmanager
async def backoffice(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    app = create_app(
        settings,
        routers=[backoffice_http.router],
        lifespans=[backoffice_http.lifespan],
        topology=lambda s, t: Topology(),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bo") as client:
            yield app, client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def try_login(client: httpx.AsyncClient, token: str) -> httpx.Response:
    csrf = csrf_of((await client.get("/backoffice/login")).text)
    return await client.post("/backoffice/login", data={"csrf_token": csrf, "token": token})


def test_an_empty_or_short_admin_token_is_refused_and_unset_stays_allowed() -> None:
    for bad in ["", "   ", "short", "x" * 15]:
        with pytest.raises(ValidationError, match="at least 16 characters"):
            Settings(admin_token=bad)
    assert Settings(admin_token="x" * 16).admin_token is not None
    assert Settings().admin_token is None
    with pytest.raises(ValueError, match="non-empty"):
        Signer("")
    assert not Signer("x" * 16).credential_ok("")


async def test_back_office_logins_are_throttled_and_failures_logged_without_the_secret(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"login_max_failures": 3})
    async with backoffice(settings) as (_, client):
        with caplog.at_level(logging.WARNING, logger="rabbitry.backoffice"):
            codes = [(await try_login(client, f"guess-number-{n}")).status_code for n in range(5)]
        assert codes == [401, 401, 401, 429, 429]
        # Even the right token waits for the window now.
        assert (await try_login(client, TOKEN)).status_code == 429
    logged = caplog.text
    assert "failed login from" in logged
    assert "guess-number" not in logged


async def test_logging_out_makes_a_copy_of_the_session_cookie_worthless(
    settings: Settings,
) -> None:
    async with backoffice(settings) as (_, client):
        assert (await try_login(client, TOKEN)).status_code == 303
        page = await client.get("/backoffice/")
        assert page.status_code == 200
        stolen = dict(client.cookies)
        out = await client.post("/backoffice/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303, out.text
        client.cookies.clear()
        client.cookies.update(stolen)
        replay = await client.get("/backoffice/")
        assert replay.status_code == 303 and replay.headers["location"].endswith("/login")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_logout_on_one_back_office_process_is_honoured_by_the_others(
    settings: Settings, kind: str, tmp_path: Path
) -> None:
    async with scratch_database(kind, tmp_path) as url:
        settings = settings.model_copy(update={"database_url": SecretStr(url)})
        async with Database(settings.sql_url) as database:
            await database.upgrade()
        await _logout_across_replicas(settings)


async def _logout_across_replicas(settings: Settings) -> None:
    # Two apps with their own state on one database: two replicas behind a load balancer.
    async with backoffice(settings) as (_, first), backoffice(settings) as (_, second):
        assert (await try_login(first, TOKEN)).status_code == 303
        page = await first.get("/backoffice/")
        stolen = dict(first.cookies)
        second.cookies.update(stolen)
        assert (await second.get("/backoffice/")).status_code == 200  # the cookie is good there
        out = await first.post("/backoffice/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        replay = await second.get("/backoffice/")
        assert replay.status_code == 303 and replay.headers["location"].endswith("/login")
        # A fresh login on the same replica is a new session, not caught by the old logout.
        second.cookies.clear()
        assert (await try_login(second, TOKEN)).status_code == 303
        assert (await second.get("/backoffice/")).status_code == 200
    session = Signer(TOKEN).load(stolen[COOKIE])
    assert session is not None
    async with Database(settings.sql_url) as database:
        assert await Logouts(database).holds(session.sid)  # a new process learns it too
        assert not await Logouts(database).holds(Session.anonymous().sid)


async def test_forty_digit_ids_in_back_office_urls_get_a_4xx_not_a_500(
    settings: Settings,
) -> None:
    huge = "9" * 40
    async with backoffice(settings) as (_, client):
        assert (await try_login(client, TOKEN)).status_code == 303
        for path, params in [
            (f"/backoffice/messages/{huge}", {}),
            ("/backoffice/messages/9223372036854775808", {}),
            ("/backoffice/events", {"entity": "App\\Order", "id": huge}),
            ("/backoffice/events", {"entity": "App\\Order", "id": "-" + huge}),
            ("/backoffice/send", {"kind": "events", "key": f"App\\Order:{huge}"}),
            ("/backoffice/send", {"kind": "users", "key": "9999999999999999999"}),
            ("/backoffice/entities/users", {"after": "9999999999999999999"}),
        ]:
            answer = await client.get(path, params=params)
            assert 400 <= answer.status_code < 500 or answer.status_code == 200, (path, params)
            assert answer.status_code != 500
    assert int64("9223372036854775807") == 2**63 - 1
    assert int64("9223372036854775808") is None
    assert int64("-9223372036854775808") == -(2**63)
    assert int64("٣") is None  # a digit to str.isdigit, not to a database


async def test_healthz_shows_no_database_error_text_to_anyone(settings: Settings) -> None:
    broken = settings.model_copy(
        update={"database_url": SecretStr("postgresql://nobody:hunter2@127.0.0.1:1/secretdb")}
    )
    app = create_app(broken)
    AppState.of(app).database = cast(Database, _BrokenDatabase())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        answer = await client.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["database"] == "unavailable"
    assert "hunter2" not in answer.text and "secretdb" not in answer.text


class _BrokenDatabase:
    @asynccontextmanager
    async def session(self) -> AsyncIterator[None]:
        from rabbitry.errors import StorageError

        raise StorageError("cannot connect to postgresql://nobody:hunter2@127.0.0.1:1/secretdb")
        yield


async def test_metrics_keep_tenant_names_from_anyone_without_the_admin_token(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    queue = f"{settings.namespace}.tenant.acme-secret.removals"
    metrics.CONSUMED.labels(queue).inc()
    metrics.CONSUMED.labels(f"{settings.namespace}.module.workflow").inc()
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        public = await client.get("/metrics")
        admin = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert public.status_code == 200 and "acme-secret" not in public.text
    assert f"{settings.namespace}.module.workflow" in public.text
    assert "acme-secret" in admin.text

    closed = create_app(settings.model_copy(update={"metrics_require_admin": True}))
    transport = httpx.ASGITransport(app=closed)
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        refused = await client.get("/metrics")
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 401 and refused.json()["error"]
    assert allowed.status_code == 200 and "acme-secret" in allowed.text


async def test_the_chat_page_has_the_back_offices_security_headers(settings: Settings) -> None:
    app = create_app(
        settings.model_copy(update={"admin_token": SecretStr(TOKEN)}), routers=all_routers()
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
        page = await client.get("/chat/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'sha256-" in csp
    assert "'unsafe-inline'" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"


def test_token_redaction_covers_percent_encoded_and_upper_case_keys() -> None:
    for line in [
        "GET /chat/ws/r?tenant=a&token=a.SECRET HTTP/1.1",
        "GET /chat/ws/r?tenant=a&%74oken=a.SECRET",
        "GET /chat/ws/r?%74%6F%6B%65%6E=a.SECRET&tenant=a",
        "GET /chat/ws/r?TOKEN=a.SECRET",
        '"WebSocket /chat/ws/r?tok%65n=a.SECRET" 403',
    ]:
        redacted = redact_tokens(line)
        assert "SECRET" not in redacted, line
        assert "tenant=a" in redacted or "tenant" not in line
    assert redact_tokens("/x?tenant=a&since=b") == "/x?tenant=a&since=b"


async def test_a_back_office_requeue_is_tried_even_while_the_apps_circuit_is_open(
    settings: Settings,
    endpoint: Endpoint,
    broker: BrokerProbe,
    declarer: object,
    eventually: Eventually,
) -> None:
    from rabbitry.amqp.declarer import Declarer

    assert isinstance(declarer, Declarer)
    queue = f"{settings.namespace}.requeued"
    await declarer.declare(work_queue(queue, policy=settings.retry))
    # The app talks to the broker through an address that refuses connections at first.
    down = settings.model_copy(
        update={"amqp_url": SecretStr(endpoint.url), "circuit_open_seconds": 3600.0}
    )
    async with backoffice(down) as (app, client):
        publisher = AppState.of(app).publisher
        assert publisher is not None
        result = await publisher.publish(Message(type="t", payload={}), Route("", queue))
        assert result.status is PublishStatus.PERSISTED  # in the outbox; the circuit is open
        await endpoint.open("forward")  # the blip is over
        assert (await try_login(client, TOKEN)).status_code == 303
        csrf = csrf_of((await client.get("/backoffice/messages")).text)
        started = await client.post(
            "/backoffice/messages/requeue", data={"csrf_token": csrf, "scope": "matching"}
        )
        assert started.status_code == 303, started.text
        job_id = started.headers["location"].rsplit("/", 1)[-1]
        job = AppState.of(app).get(Jobs).get(job_id)
        assert job is not None

        async def finished() -> bool:
            return bool(job.done)

        await eventually(finished, what="the requeue job")
        assert (job.published, job.failed, job.error) == (1, 0, None), job.errors
    assert len(await broker.get_all(queue)) == 1


async def test_request_bodies_over_the_limit_get_413_before_they_are_read(
    settings: Settings, broker: BrokerProbe
) -> None:
    settings = settings.model_copy(update={"http_max_body": 4096})
    async with backoffice(settings) as (_, client):
        seen: list[int] = []

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(1000):  # 1 MB, chunked: no Content-Length to refuse up front
                seen.append(1)
                yield b"x" * 1024

        declared = await client.post("/backoffice/login", content=b"x" * 100_000)
        streamed = await client.post("/backoffice/login", content=chunks())
        for answer in (declared, streamed):
            assert answer.status_code == 413
            assert answer.json() == {"error": "request body too large: at most 4096 bytes"}
        assert len(seen) < 1000  # the body was cut off, not read to its end
        small = await client.post("/backoffice/login", content=b"token=x")
        assert small.status_code == 403  # read and judged (no CSRF token)


async def test_the_dashboard_reports_tenant_rows_no_tenant_may_have(settings: Settings) -> None:
    from sqlalchemy import insert

    from rabbitry.sessions.models import Tenant
    from rabbitry.storage import Database
    from rabbitry.storage.clock import utcnow

    async with Database(settings.sql_url) as db:
        await db.upgrade()
        async with db.session() as session:
            await session.execute(insert(Tenant).values(name="-x", created_at=utcnow()))
    async with backoffice(settings) as (_, client):
        assert (await try_login(client, TOKEN)).status_code == 303
        page = await client.get("/backoffice/")
    assert page.status_code == 200
    assert 'id="invalid-tenants"' in page.text and "<code>-x</code>" in page.text


async def test_healthz_is_not_ok_once_the_processs_services_have_stopped(
    settings: Settings, broker: BrokerProbe
) -> None:
    app = create_app(settings, workers=["workflow"])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            assert (await client.get("/healthz")).json()["workers"] == "ok"
            stopping = AppState.of(app).stopping
            assert stopping is not None
            stopping.set()  # what a crashed service does to the others
            answer = await client.get("/healthz")
    assert answer.status_code == 503
    assert answer.json()["workers"] == "stopped" and answer.json()["status"] == "degraded"
