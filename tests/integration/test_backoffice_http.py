"""The back-office over HTTP (the app in the test's loop, real RabbitMQ and SQLite): what the
browser tests do not reach: the broker down in mode rabbit, sends to queues the modal did not
offer, bad input, pages without a login."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from pydantic import SecretStr

from conftest import BrokerProbe, Endpoint
from rabbitry.app import registry as parts
from rabbitry.app.http import create_app
from rabbitry.backoffice import http as backoffice_http
from rabbitry.config import RegistryEntry, Settings
from rabbitry.messaging import Topology
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.outbox import registry
from rabbitry.outbox.message import OutboxQuery, State
from rabbitry.outbox.store import Outbox
from rabbitry.sessions.tenants import Tenants
from rabbitry.sessions.users import Users, hasher
from rabbitry.storage import Database

TOKEN = "http-test-admin-token"
USER = "rabbitry.sessions.User"


def entries(namespace: str) -> list[RegistryEntry]:
    common = {"classname": USER, "exchange": f"{namespace}.tenants"}
    return [
        RegistryEntry(
            name="revoke",
            allow_manual_insertion=True,
            routing_key="{tenant}.session-removal",
            message_type="session-removal",
            **common,
        ),
        RegistryEntry(name="audit", allow_manual_insertion=False, routing_key="a", **common),
        RegistryEntry(
            name="welcome",
            allow_manual_insertion=True,
            classname="rabbitry.sessions.Tenant",
            exchange=f"{namespace}.tenants",
            routing_key="w",
        ),
    ]


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    app = create_app(
        settings,
        routers=[backoffice_http.router],
        lifespans=[backoffice_http.lifespan],
        topology=lambda s, t: Topology(),
        entity_pages=parts.entity_pages,
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bo") as client:
            yield client


async def seed(settings: Settings) -> int:
    async with Database(settings.sql_url) as db:
        await db.upgrade()
        await registry.sync(db, entries(settings.namespace))
        await Tenants(db).create("acme")
        bob = await Users(db, hasher(time_cost=1, memory_kib=8192)).create(
            "acme", "bob", "pw pw pw pw"
        )
    return bob.id


async def log_in(client: httpx.AsyncClient) -> str:
    page = await client.get("/backoffice/login")
    csrf = csrf_of(page.text)
    done = await client.post("/backoffice/login", data={"csrf_token": csrf, "token": TOKEN})
    assert done.status_code == 303
    return csrf_of((await client.get("/backoffice/")).text)


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def test_with_the_broker_down_a_manual_send_is_kept_in_the_outbox(
    settings: Settings, endpoint: Endpoint
) -> None:
    bob = await seed(settings)
    await endpoint.open("closed")  # the broker refuses every connection
    down = settings.model_copy(update={"amqp_url": SecretStr(endpoint.url)})
    async with client_for(down) as client:
        csrf = await log_in(client)
        answer = await client.post(
            "/backoffice/send",
            data={"csrf_token": csrf, "kind": "users", "key": str(bob), "queue": "revoke"},
        )
    assert answer.status_code == 200
    assert "kept in the outbox" in answer.text
    async with Database(settings.sql_url) as db:
        page = await Outbox(db).page(OutboxQuery(state=State.PENDING))
    (row,) = page.messages
    assert (row.queue, row.origin, row.routing_key) == (
        "revoke",
        "contingency",
        "acme.session-removal",
    )


async def test_only_a_queue_the_modal_offers_takes_the_record(
    settings: Settings,
    broker: BrokerProbe,  # broker: the app's declared topology is removed
) -> None:
    bob = await seed(settings)
    async with client_for(settings) as client:
        csrf = await log_in(client)
        modal = await client.get(
            "/backoffice/send",
            params={"kind": "users", "key": str(bob)},
            headers={"HX-Request": "1"},
        )
        assert 'data-queue="revoke"' in modal.text
        assert "audit" not in modal.text and "welcome" not in modal.text

        async def send(queue: str) -> httpx.Response:
            data = {"csrf_token": csrf, "kind": "users", "key": str(bob), "queue": queue}
            return await client.post("/backoffice/send", data=data)

        refused, other, missing = await send("audit"), await send("welcome"), await send("nope")
    assert refused.status_code == 403 and "does not allow" in refused.json()["error"]
    assert other.status_code == 404 and missing.status_code == 404
    async with Database(settings.sql_url) as db:
        assert (await Outbox(db).page(OutboxQuery())).messages == ()


async def test_pages_need_a_login_and_bad_input_gets_a_4xx(
    settings: Settings, broker: BrokerProbe
) -> None:
    await seed(settings)
    async with client_for(settings) as client:
        assert (await client.get("/backoffice/messages")).headers["location"].endswith("/login")
        fragment = await client.get("/backoffice/jobs/x/progress", headers={"HX-Request": "1"})
        assert fragment.headers["HX-Redirect"] == "/backoffice/login"
        wrong = await client.post(
            "/backoffice/login",
            data={
                "csrf_token": csrf_of((await client.get("/backoffice/login")).text),
                "token": "x",
            },
        )
        assert wrong.status_code == 401
        csrf = await log_in(client)
        assert (
            await client.get("/backoffice/messages", params={"to": "2024-07-01"})
        ).status_code == 400
        nothing = await client.post("/backoffice/messages/requeue", data={"csrf_token": csrf})
        assert nothing.status_code == 400 and nothing.json() == {"error": "no row selected"}
        assert (await client.get("/backoffice/entities/nope")).status_code == 404
        assert (await client.get("/backoffice/dead-letters/bad%20name")).status_code == 400
        assert (await client.get("/backoffice/static/../web.py")).status_code == 404
        page = await client.get("/backoffice/messages")
        assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_the_messages_pages_flag_a_row_the_broker_refused(settings: Settings) -> None:
    await seed(settings)
    missing = Route(f"{settings.namespace}.missing", "k")
    async with (
        Database(settings.sql_url) as db,
        Publisher(settings.amqp, fallback=Outbox(db)) as publisher,
    ):
        refused = await publisher.publish(Message("refused.job", {}), missing)
        await Outbox(db).store([(missing, Message("outage.job", {}), "no confirm within 5s")])
        rows = {r.type: r for r in (await Outbox(db).page(OutboxQuery())).messages}
    assert refused.refused
    async with client_for(settings) as client:
        await log_in(client)
        listing = (await client.get("/backoffice/messages")).text
        flagged = (await client.get(f"/backoffice/messages/{rows['refused.job'].id}")).text
        plain = (await client.get(f"/backoffice/messages/{rows['outage.job'].id}")).text

    def row_of(row_id: int) -> str:
        found = re.search(rf'<tr [^>]*data-id="{row_id}">(.*?)</tr>', listing, flags=re.S)
        assert found, f"row {row_id} not listed"
        return found.group(1)

    assert 'class="badge refused"' in row_of(rows["refused.job"].id)
    assert 'class="badge refused"' not in row_of(rows["outage.job"].id)
    assert "The broker refused this message" in flagged and "Relay tries again" in flagged
    assert "The broker refused this message" not in plain
