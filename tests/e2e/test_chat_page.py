"""The /chat/ page in a real browser (Playwright driving Debian's Chromium): log in, pick a
room, send, see messages live, and still see them after a reload."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import websockets
from playwright.async_api import Browser, Page, expect

from browser import chromium
from fixtures.chat import ChatSystem, chat_system, socket_url

TENANT = "acme"


@pytest.fixture
def system(tmp_path: Path) -> Iterator[ChatSystem]:
    with chat_system(tmp_path, extra_gateways=0) as running:
        running.create_tenant(TENANT)
        running.create_user(TENANT, "ann")
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def _log_in(page: Page, system: ChatSystem, username: str) -> None:
    await page.goto(f"{system.api}/chat/")
    await page.fill("#tenant", TENANT)
    await page.fill("#username", username)
    await page.fill("#password", "a long passphrase")
    await page.click("#login")
    await expect(page.locator("#who")).to_have_text(f"{username}@{TENANT}")


async def test_the_chat_page_logs_in_joins_a_room_sends_and_shows_messages_live_and_after_reload(
    system: ChatSystem, browser: Browser
) -> None:
    system.create_user(TENANT, "bob")
    bob = system.login(TENANT, "bob")
    page = await browser.new_page()
    await _log_in(page, system, "ann")
    await page.fill("#room", "lobby")
    await page.click("#join")
    await expect(page.locator("#status")).to_have_text("In room lobby.")

    await page.fill("#text", "hello from the browser <b>not bold</b>")
    await page.click("#send")
    messages = page.locator("#messages li")
    await expect(messages).to_have_count(1)
    await expect(messages.nth(0).locator(".sender")).to_have_text("ann")
    # Shown as text, never as markup.
    await expect(messages.nth(0).locator(".text")).to_have_text(
        "hello from the browser <b>not bold</b>"
    )
    assert await page.locator("#messages b").count() == 0

    async with websockets.connect(socket_url(system.api, "lobby", TENANT, bob)) as socket:
        await socket.send(json.dumps({"text": "hi ann, it's bob"}))
        await expect(messages).to_have_count(2)
        await expect(messages.nth(1).locator(".sender")).to_have_text("bob")

    await page.reload()
    await expect(page.locator("#who")).to_have_text(f"ann@{TENANT}")  # still logged in
    await expect(messages).to_have_count(2)
    await expect(messages.nth(0).locator(".text")).to_have_text(
        "hello from the browser <b>not bold</b>"
    )
    await expect(messages.nth(1).locator(".text")).to_have_text("hi ann, it's bob")

    await page.fill("#text", "after the reload")
    await page.click("#send")
    await expect(messages).to_have_count(3)
    await page.close()


async def test_the_chat_page_says_why_a_login_failed(system: ChatSystem, browser: Browser) -> None:
    page = await browser.new_page()
    await page.goto(f"{system.api}/chat/")
    await page.fill("#tenant", TENANT)
    await page.fill("#username", "ann")
    await page.fill("#password", "wrong password")
    await page.click("#login")
    await expect(page.locator("#status")).to_contain_text("Login failed")
    await expect(page.locator("#chat")).to_be_hidden()
    await page.close()
