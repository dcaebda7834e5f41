"""The back-office dashboard's live charts in a real browser (Playwright driving Debian's
Chromium) against ``rabbitry up``: the charts draw, and their figures move when messages flow.

With ``RABBITRY_SCREENSHOTS=docs/img`` the screenshot it takes is the one the docs show
(``scripts/screenshots`` runs it so).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from browser import chromium
from helpers import AMQP_URL, RABBITRY, delete_namespace, free_port, message, publish, wait_until
from rabbitry.config import Settings

TOKEN = "dashboard-test-token"

# Pixels of a chart's canvas that belong to its lines, not its grey axes and grid.
COLOURED_PIXELS = """(canvas) => {
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
    if (a > 0 && Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured += 1;
  }
  return coloured;
}"""


@dataclass
class System:
    base: str
    settings: Settings

    def url(self, path: str) -> str:
        return f"{self.base}/backoffice{path}"


@pytest.fixture
def system(tmp_path: Path, namespace: str) -> Iterator[System]:
    """``rabbitry up`` with a module nobody consumes (``billing``): its queue fills up."""
    port = free_port()
    env = {
        **os.environ,
        "RABBITRY_AMQP_URL": AMQP_URL,
        "RABBITRY_NAMESPACE": namespace,
        "RABBITRY_DATA_DIR": str(tmp_path / "var"),
        "RABBITRY_ADMIN_TOKEN": TOKEN,
        "RABBITRY_DASHBOARD_INTERVAL": "1",
        "RABBITRY_MODULES": json.dumps([{"name": "billing", "routing_keys": ["invoice.#"]}]),
    }
    with (tmp_path / "up.log").open("w") as log:
        proc = subprocess.Popen(
            [RABBITRY, "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(f"{base}/healthz").status_code == 200, timeout=90, what="/healthz"
        )
        yield System(base, Settings(namespace=namespace, amqp_url=AMQP_URL))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        asyncio.run(delete_namespace(namespace))
        print((tmp_path / "up.log").read_text()[-3000:])


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    where = Path(os.environ.get("RABBITRY_SCREENSHOTS") or tmp_path / "shots")
    where.mkdir(parents=True, exist_ok=True)
    return where


async def logged_in(browser: Browser, system: System) -> Page:
    page = await browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    # A refused script or style (the Content-Security-Policy) and any script error show here;
    # the browser's own favicon request (the back-office has none) does not count.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(system.url("/login"))
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_have_text("Dashboard")
    page.errors = errors  # type: ignore[attr-defined]  # read by the test: CSP refusals show here
    return page


def latest(page: Page, chart: str, line: str) -> str:
    return f'figure[data-chart="{chart}"] li[data-line="{line}"] .value'


async def rate_of(page: Page, chart: str, line: str) -> float:
    text = await page.locator(latest(page, chart, line)).text_content(timeout=60_000) or ""
    return float(text.removesuffix("/s")) if text[:1].isdigit() else 0.0


async def test_the_charts_draw_and_their_figures_move_when_messages_flow(
    system: System, browser: Browser, shots: Path
) -> None:
    namespace = system.settings.namespace
    billing, workflow = f"{namespace}.module.billing", f"{namespace}.module.workflow"
    page = await logged_in(browser, system)
    depth = page.locator(latest(page, "depth", billing))
    await expect(depth).to_have_text("0", timeout=60_000)
    for chart in ("depth", "consumers", "delivered", "acked", "outbox", "event_store_lag"):
        await expect(page.locator(f'figure[data-chart="{chart}"] canvas')).to_have_count(1)

    # Nobody consumes billing: its depth climbs to what was published and stays there.
    await publish(system.settings, billing, *(message(n) for n in range(25)))
    await expect(depth).to_have_text("25", timeout=60_000)
    await expect(page.locator(f'#queues tr[data-queue="{billing}"] td.depth')).to_have_text("25")

    # The workflow consumes its module queue: while messages flow, its delivered and acked
    # rates are above zero.
    async def flow() -> None:
        for n in range(40):
            await publish(system.settings, workflow, *(message(n) for _ in range(20)))
            await asyncio.sleep(0.25)

    flowing = asyncio.create_task(flow())
    try:

        async def moving() -> bool:
            return (
                await rate_of(page, "delivered", workflow) > 0
                and await rate_of(page, "acked", workflow) > 0
            )

        for _ in range(120):
            if await moving():
                break
            await asyncio.sleep(0.5)
        assert await moving(), "the delivered and acked rates of the workflow's queue never moved"
        lines = await page.locator('figure[data-chart="depth"] canvas').evaluate(COLOURED_PIXELS)
        assert lines > 50, f"the depth chart drew {lines} coloured pixels"
        rates = await page.locator('figure[data-chart="acked"] canvas').evaluate(COLOURED_PIXELS)
        assert rates > 50, f"the acked chart drew {rates} coloured pixels"
        await expect(page.locator("#gateways tbody tr[data-gateway]")).to_have_count(1)
        await page.screenshot(path=str(shots / "backoffice-charts.png"), full_page=True)
    finally:
        await flowing
    assert (shots / "backoffice-charts.png").stat().st_size > 10_000
    assert page.errors == []  # type: ignore[attr-defined]


async def test_a_fresh_page_starts_with_the_last_minutes_and_a_poll_needs_a_session(
    system: System, browser: Browser
) -> None:
    await asyncio.sleep(3)  # the sampler has been reading since start-up
    async with httpx.AsyncClient() as http:
        refused = await http.get(system.url("/dashboard.json"))
    assert refused.status_code == 401
    assert refused.json() == {"error": "log in to the back-office"}
    page = await logged_in(browser, system)
    await expect(page.locator("#live")).to_have_attribute("data-readings", re.compile(r"\d+"))
    # The page's first poll already brought readings taken before it was opened.
    assert int(await page.locator("#live").get_attribute("data-readings") or 0) >= 3
    document = await page.evaluate(
        "async (url) => (await fetch(url)).json()", system.url("/dashboard.json")
    )
    assert len(document["t"]) >= 3
    assert f"{system.settings.namespace}.module.billing" in document["depth"]
