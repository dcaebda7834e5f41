"""The back-office in a real browser (Playwright driving Debian's Chromium) against a
``rabbitry serve backoffice`` process with its own namespace and SQLite file: login, filters,
requeue, the ▶ modal's queues, rabbit vs db outcomes, CSRF, escaping.

Each test leaves a screenshot of the pages it visits; with ``RABBITRY_SCREENSHOTS=docs/img``
they are the ones the docs show.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from playwright.async_api import Browser, Page, expect

from browser import chromium
from conftest import BrokerProbe
from fixtures.outbox import seed_rows, set_created_at
from helpers import AMQP_URL, RABBITRY, free_port, wait_until
from rabbitry.amqp.declarer import Declarer
from rabbitry.chat.models import StoredChatMessage
from rabbitry.config import Settings
from rabbitry.events.change import ChangeEvent, ChangeType
from rabbitry.events.store import EventStore, Incoming
from rabbitry.messaging import Binding, Exchange, ExchangeType, Queue, Topology
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Route
from rabbitry.outbox.filters import Origin
from rabbitry.outbox.message import OutboxQuery, State
from rabbitry.outbox.store import Outbox
from rabbitry.sessions.tenants import Tenants
from rabbitry.sessions.topology import tenant_topology
from rabbitry.sessions.users import Users, hasher
from rabbitry.storage import Database

TOKEN = "backoffice-test-token"
UTC = dt.UTC


@dataclass
class Backoffice:
    base: str
    namespace: str
    db_url: str
    config: Path

    def url(self, path: str) -> str:
        return f"{self.base}/backoffice{path}"


def registry(namespace: str) -> list[dict[str, object]]:
    """Queues of the test's registry: two for users, one that refuses manual sends, one for
    tenants; the ledger's queues."""
    user = "rabbitry.sessions.User"
    return [
        {
            "name": "revoke-sessions",
            "description": "Revoke all sessions",
            "allow_manual_insertion": True,
            "classname": user,
            "exchange": f"{namespace}.tenants",
            "routing_key": "{tenant}.session-removal",
            "message_type": "session-removal",
        },
        {
            "name": "user-change",
            "description": "Re-emit as change event",
            "allow_manual_insertion": True,
            "classname": user,
            "exchange": f"{namespace}.events",
            "routing_key": "update",
            "payload": "change",
        },
        {
            "name": "user-audit",
            "description": "Audit (not by hand)",
            "allow_manual_insertion": False,
            "classname": user,
            "exchange": f"{namespace}.x",
            "routing_key": "audit",
        },
        {
            "name": "tenant-welcome",
            "description": "Welcome the tenant",
            "allow_manual_insertion": True,
            "classname": "rabbitry.sessions.Tenant",
            "exchange": f"{namespace}.x",
            "routing_key": "tenant.welcome",
        },
        {"name": "orders", "exchange": f"{namespace}.x", "routing_key": "order.placed"},
        {"name": "invoices", "exchange": f"{namespace}.x", "routing_key": "invoice.paid"},
    ]


@contextmanager
def serving(tmp_path: Path, namespace: str, mode: str = "rabbit") -> Iterator[Backoffice]:
    db_url = f"sqlite:///{tmp_path / 'rabbitry.db'}"
    config = tmp_path / "rabbitry.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "namespace": namespace,
                "amqp_url": AMQP_URL,
                "database_url": db_url,
                "queues": registry(namespace),
            }
        ),
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "RABBITRY_ADMIN_TOKEN": TOKEN,
        "RABBITRY_MANUAL_PROCESSING_MODE": mode,
    }
    subprocess.run(
        [RABBITRY, "--config", str(config), "queues", "sync"], env=env, check=True, timeout=60
    )
    port = free_port()
    log_path = tmp_path / f"backoffice-{mode}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [RABBITRY, "--config", str(config), "serve", "backoffice", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/healthz").status_code == 200, what="/healthz")
        yield Backoffice(base, namespace, db_url, config)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(log_path.read_text()[-3000:])


@pytest.fixture
def backoffice(
    tmp_path: Path, namespace: str, broker: BrokerProbe
) -> Iterator[Backoffice]:  # broker: the namespace's objects are deleted afterwards
    with serving(tmp_path, namespace) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("RABBITRY_SCREENSHOTS") or tmp_path / "shots")
    where.mkdir(parents=True, exist_ok=True)
    return where


async def shot(page: Page, where: Path, name: str) -> None:
    path = where / f"backoffice-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 1000


async def logged_in(browser: Browser, system: Backoffice) -> Page:
    page = await browser.new_page(viewport={"width": 1360, "height": 860})
    await page.goto(system.url("/login"))
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Dashboard")
    return page


async def topic(settings: Settings, declarer: Declarer) -> str:
    """``<ns>.x`` (topic) -> ``<ns>.q`` bound ``#``: where the ledger's rows go."""
    exchange, queue = f"{settings.namespace}.x", f"{settings.namespace}.q"
    await declarer.declare(
        Topology.of(
            exchanges=[Exchange(exchange, ExchangeType.TOPIC)],
            queues=[Queue(queue)],
            bindings=[Binding(exchange, queue, "#")],
        )
    )
    return queue


async def seed_ledger(
    system: Backoffice, rows: list[tuple[str, str, dict[str, object]]]
) -> list[int]:
    """(queue, created at, payload) rows, pending, with a contingency reason."""
    async with Database(Settings(database_url=system.db_url).sql_url) as db:
        ids = await seed_rows(
            db,
            [
                (
                    Route(f"{system.namespace}.x", "order.placed", queue=queue),
                    Message(type="order.placed", payload=payload),
                    "broker unreachable: <img src=x onerror=alert(1)>",
                )
                for queue, _, payload in rows
            ],
        )
        await set_created_at(
            db,
            {
                i: dt.datetime.fromisoformat(when).astimezone(UTC)
                for i, (_, when, _) in zip(ids, rows, strict=True)
            },
        )
    return ids


async def seed_people(system: Backoffice) -> int:
    """Tenant acme with users ann and bob; returns bob's id."""
    async with Database(Settings(database_url=system.db_url).sql_url) as db:
        await Tenants(db).create("acme")
        await Tenants(db).create("globex")
        users = Users(db, hasher(time_cost=1, memory_kib=8192))
        await users.create("acme", "ann", "a long passphrase")
        bob = await users.create("acme", "bob", "a long passphrase")
        now = dt.datetime.now(UTC)
        async with db.session() as session:
            for n, room in enumerate(["lobby", "lobby", "support"]):
                session.add(
                    StoredChatMessage(
                        id=f"0000-{n}",
                        tenant="acme",
                        room=room,
                        sender="ann",
                        text="hi",
                        sent_at=now,
                        stored_at=now,
                    )
                )
    return bob.id


async def test_login_takes_the_admin_token_and_nothing_else(
    backoffice: Backoffice, browser: Browser, shots: Path
) -> None:
    page = await browser.new_page(viewport={"width": 1360, "height": 860})
    await page.goto(backoffice.url("/messages"))
    await expect(page).to_have_url(backoffice.url("/login"))
    await shot(page, shots, "login")
    await page.fill("input[name=token]", "wrong")
    await page.click("button[type=submit]")
    await expect(page.locator(".problem")).to_have_text("wrong admin token")
    cookie = next(c for c in await page.context.cookies() if c["name"] == "rabbitry_backoffice")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    page = await logged_in(browser, backoffice)
    await expect(page.locator("#queues")).to_contain_text(
        f"{backoffice.namespace}.event-sourcing.p0"
    )
    await shot(page, shots, "dashboard")
    await page.click("text=Log out")
    await page.goto(backoffice.url("/"))
    await expect(page).to_have_url(backoffice.url("/login"))


async def test_filters_show_the_rows_of_a_queue_state_and_date_range(
    backoffice: Backoffice, browser: Browser, shots: Path
) -> None:
    ids = await seed_ledger(
        backoffice,
        [
            ("orders", "2024-07-01 09:00:00", {"n": 1}),
            ("orders", "2024-07-01 10:00:00", {"n": 2}),
            ("orders", "2024-07-02 10:00:00", {"n": 3}),
            ("invoices", "2024-07-01 11:00:00", {"n": 4}),
        ],
    )
    async with Database(Settings(database_url=backoffice.db_url).sql_url) as db:
        await Outbox(db).delete([ids[2]])
    page = await logged_in(browser, backoffice)
    await page.click("text=Messages to enqueue")
    rows = page.locator("table.rows tbody tr[data-id]")
    await expect(rows).to_have_count(3)  # the deleted one is hidden
    await shot(page, shots, "messages")

    await page.fill("input[name=queue]", "orders")
    await page.click("form#filters button[type=submit]")
    await expect(rows).to_have_count(2)
    await page.select_option("select[name=state]", "deleted")
    await page.click("form#filters button[type=submit]")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-id", str(ids[2]))

    await page.goto(backoffice.url("/messages"))
    await page.fill("input[name=from]", "2024-07-01T09:30:00")
    await page.fill("input[name=to]", "2024-07-01T11:00:00")
    await page.click("form#filters button[type=submit]")
    await expect(rows).to_have_count(2)
    assert {await r.get_attribute("data-id") for r in await rows.all()} == {
        str(ids[1]),
        str(ids[3]),
    }
    await expect(page.locator("#pending-count")).to_contain_text("2 pending")


async def test_requeue_of_selected_rows_then_of_everything_matching_reaches_the_broker(
    backoffice: Backoffice,
    browser: Browser,
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    shots: Path,
) -> None:
    queue = await topic(settings, declarer)
    ids = await seed_ledger(
        backoffice,
        [("orders", f"2024-07-01 10:00:0{n}", {"n": n}) for n in range(3)],
    )
    page = await logged_in(browser, backoffice)
    await page.goto(backoffice.url("/messages"))
    for row_id in ids[:2]:
        await page.check(f"tr[data-id='{row_id}'] input[name=ids]")
    await page.click("text=Requeue selected")
    await expect(page.locator("#job-status")).to_have_text("done")
    await expect(page.locator("#job .published")).to_have_text("2")
    await shot(page, shots, "requeue")
    assert len(await broker.get_all(queue)) == 2

    await page.goto(backoffice.url("/messages"))
    for row_id in ids[:2]:
        row = page.locator(f"tr[data-id='{row_id}']")
        await expect(row.locator(".badge")).to_have_text("processed")
        await expect(row.locator("td.requeued")).not_to_have_text("never")
    await expect(page.locator(f"tr[data-id='{ids[2]}'] td.requeued")).to_have_text("never")

    await page.click("text=Requeue all 1 matching")
    await expect(page.locator("#job-status")).to_have_text("done")
    await expect(page.locator("#job .published")).to_have_text("1")
    assert len(await broker.get_all(queue)) == 1


async def test_the_play_modal_lists_exactly_the_manual_queues_of_the_rows_classname(
    backoffice: Backoffice, browser: Browser, shots: Path
) -> None:
    bob = await seed_people(backoffice)
    page = await logged_in(browser, backoffice)
    await page.click("text=Users")
    await expect(page.locator("table.entities tbody tr")).to_have_count(2)
    await page.click(f"tr[data-key='{bob}'] a.play")
    buttons = page.locator("#send-queues button")
    await expect(buttons).to_have_text(["Revoke all sessions", "Re-emit as change event"])
    await shot(page, shots, "send-modal")
    await page.click(".dialog .close")
    await expect(page.locator(".dialog")).to_have_count(0)

    await page.fill("input[name=q]", "an")
    await page.click("form.filters button[type=submit]")
    await expect(page.locator("table.entities tbody tr")).to_have_count(1)
    await shot(page, shots, "users")

    await page.click("text=Tenants")
    await page.click("tr[data-key] >> nth=0 >> a.play")
    await expect(page.locator("#send-queues button")).to_have_text(["Welcome the tenant"])
    await page.keyboard.press("Escape")
    await shot(page, shots, "tenants")

    await page.click("text=Chat rooms")
    rooms = page.locator("table.entities tbody tr")
    await expect(rooms).to_have_count(2)
    await expect(rooms.first).to_contain_text("lobby")
    await page.click("tr[data-key='acme:lobby'] a.play")
    await expect(page.locator("#send-queues")).to_contain_text("No queue of the registry")
    await page.keyboard.press("Escape")
    await shot(page, shots, "rooms")


async def test_mode_rabbit_publishes_now_and_mode_db_stores_for_the_requeue_command(
    backoffice: Backoffice,
    browser: Browser,
    settings: Settings,
    declarer: Declarer,
    broker: BrokerProbe,
    tmp_path: Path,
) -> None:
    bob = await seed_people(backoffice)
    await declarer.declare(tenant_topology(settings, ["acme"]))
    tenant_queue = f"{settings.namespace}.tenant.acme.removals"

    page = await logged_in(browser, backoffice)
    await page.goto(backoffice.url("/entities/users"))
    await page.click(f"tr[data-key='{bob}'] a.play")
    await page.click("button[data-queue=revoke-sessions]")
    await expect(page.locator("#send-result")).to_contain_text("Published to revoke-sessions")
    (request,) = await broker.get_all(tenant_queue)
    assert request.headers["rr_job"] == "session-removal"
    assert json.loads(request.body)["user_id"] == bob

    await page.click("button[data-queue=user-change]")
    await expect(page.locator("#send-result")).to_contain_text("Published to user-change")
    (change,) = await broker.get_all(f"{settings.namespace}.event-sourcing.p0")
    assert json.loads(change.body) == {
        "entity": "rabbitry.sessions.User",
        "id": bob,
        "user": "system",
        "data": {"tenant": "acme", "username": "bob"},
    }

    with serving(tmp_path, settings.namespace, mode="db") as stored:
        page = await logged_in(browser, stored)
        await page.goto(stored.url("/entities/users"))
        await page.click(f"tr[data-key='{bob}'] a.play")
        await expect(page.locator(".dialog .hint")).to_contain_text("stored for")
        await page.click("button[data-queue=revoke-sessions]")
        await expect(page.locator("#send-result")).to_contain_text("Stored for the requeue command")
    assert await broker.get_all(tenant_queue) == []
    async with Database(Settings(database_url=backoffice.db_url).sql_url) as db:
        page_of = await Outbox(db).page(OutboxQuery(state=State.PENDING))
    (row,) = page_of.messages
    assert (row.queue, row.origin, row.routing_key) == (
        "revoke-sessions",
        Origin.MANUAL.value,
        "acme.session-removal",
    )


async def test_a_post_without_the_csrf_token_is_refused(
    backoffice: Backoffice, browser: Browser
) -> None:
    (row_id,) = await seed_ledger(backoffice, [("orders", "2024-07-01 10:00:00", {"n": 1})])
    page = await logged_in(browser, backoffice)
    forged = await page.request.post(backoffice.url("/messages/delete"), form={"ids": str(row_id)})
    assert forged.status == 403 and "CSRF" in (await forged.json())["error"]
    wrong = await page.request.post(
        backoffice.url("/messages/delete"), form={"ids": str(row_id), "csrf_token": "x"}
    )
    assert wrong.status == 403
    # A script on the page cannot read the cookie, and without the token its POST fails too.
    script_post = "async (url) => (await fetch(url, {method: 'POST', body: 'ids=1'})).status"
    status = await page.evaluate(script_post, backoffice.url("/messages/delete"))
    assert status == 403
    assert "rabbitry_backoffice" not in await page.evaluate("document.cookie")
    async with Database(Settings(database_url=backoffice.db_url).sql_url) as db:
        entry = await Outbox(db).get(row_id)
    assert entry is not None and entry.state is State.PENDING


async def test_markup_in_a_message_body_and_in_entity_data_shows_as_text(
    backoffice: Backoffice, browser: Browser, shots: Path
) -> None:
    script = "<script>window.pwned = 1</script>"
    (row_id,) = await seed_ledger(backoffice, [("orders", "2024-07-01 10:00:00", {"note": script})])
    async with Database(Settings(database_url=backoffice.db_url).sql_url) as db:
        change = ChangeEvent(ChangeType.INSERT, "App\\Models\\Note", 1, 7, {"text": script})
        await EventStore(db).append([Incoming(change, "m-note-1", dt.datetime.now(UTC))])
    page = await logged_in(browser, backoffice)
    await page.goto(backoffice.url(f"/messages/{row_id}"))
    await expect(page.locator("#body")).to_contain_text(script)
    await shot(page, shots, "message")
    await page.goto(backoffice.url("/messages"))
    await expect(page.locator("td.error").first).to_contain_text("<img src=x onerror=alert(1)>")
    assert await page.locator("td.error img").count() == 0

    await page.goto(backoffice.url("/entities/entities"))
    await shot(page, shots, "entities")
    await page.click("td.row-actions >> text=history")
    await expect(page.locator("#state")).to_contain_text(script)
    await shot(page, shots, "events")
    assert await page.evaluate("window.pwned") is None
    assert await page.locator("main script").count() == 0


async def test_dead_letters_are_listed_and_moved_back_from_the_page(
    backoffice: Backoffice, browser: Browser, settings: Settings, broker: BrokerProbe,
    shots: Path,
) -> None:  # fmt: skip
    queue = f"{settings.namespace}.event-sourcing.p0"  # declared by the server at start
    for n in range(2):
        await broker.publish(
            "",
            f"{queue}.dlq",
            json.dumps({"entity": "<b>x</b>", "id": n}).encode(),
            message_id=f"dead-{n}",
            headers={"rr_job": "update", "x-rabbitry-reason": "bad <i>event</i>",
                     "x-rabbitry-queue": queue},
        )  # fmt: skip
    page = await logged_in(browser, backoffice)
    await page.click("text=Dead letters")
    await shot(page, shots, "dead-letter-queues")
    await page.click(f"text={queue}.dlq")
    rows = page.locator("tr[data-id]")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("bad <i>event</i>")
    await shot(page, shots, "dead-letters")
    await page.check("tr[data-id='dead-1'] input[name=ids]")
    await page.click("text=Move selected back")
    await expect(page.locator("#move-result")).to_contain_text("1 moved, 0 failed")
    await expect(rows).to_have_count(1)
    back = await broker.get_all(queue)
    assert [r.properties.message_id for r in back] == ["dead-1"]

    await page.goto(backoffice.url("/queues"))
    await expect(page.locator("table.rows tbody tr")).to_have_count(6)
    await shot(page, shots, "queues")
