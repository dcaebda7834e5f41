"""Every Python example in docs/*.md and README.md runs in the tests, as a reader would run it.

Each ```python block is either run here (a page's blocks in order as one script, or one block
as its own script, in a directory of its own, against the test broker and database), run by
the test named in :data:`RUN_ELSEWHERE`, or marked on the page as a fragment with its reason
(``<!-- fragment: why -->`` on the line before the fence). Markers stay rare
(:data:`MAX_FRAGMENTS`); a block added without any of the three fails
:func:`test_every_python_example_in_the_docs_runs_or_says_why_not`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BrokerProbe
from helpers import drain_ids, plain_queue
from rabbitry.amqp.declarer import Declarer
from rabbitry.app.operations import declare_system
from rabbitry.config import Settings
from rabbitry.events.topology import EventsLayout
from rabbitry.outbox import Outbox, RequeueFilter
from rabbitry.storage import Database

ROOT = Path(__file__).parents[2]
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
MARKER = re.compile(r"<!-- fragment: (.+) -->")
MAX_FRAGMENTS = 2


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository: "docs/outbox.md"
    index: int  # 0-based, among the page's python blocks
    line: int
    code: str
    fragment: str | None  # the marker's reason, if the page marks the block


def python_blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text(encoding="utf-8")
    found = []
    for index, match in enumerate(FENCE.finditer(text)):
        before = text[: match.start()].splitlines()
        marker = MARKER.fullmatch(before[-1]) if before else None
        reason = marker.group(1) if marker else None
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(page, index, line, match.group(1), reason))
    return found


def pages() -> list[str]:
    # docs/api.md is generated from the docstrings: its blocks are signatures, not examples
    # (tests/unit/test_api_reference.py keeps it up to date).
    docs = sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md") if p.name != "api.md")
    return ["README.md", *docs]


RUN_HERE = {
    ("docs/outbox.md", 0),
    ("docs/message-format.md", 0),
    ("docs/message-format.md", 1),
    ("docs/events.md", 0),
    ("docs/events.md", 1),
    ("docs/architecture.md", 0),
    ("docs/library.md", 1),  # Messages
    ("docs/library.md", 2),  # Topology
    ("docs/library.md", 3),  # Publishing
    ("docs/library.md", 8),  # Subscriptions at run time
    ("docs/observability.md", 0),
}
RUN_ELSEWHERE = {
    ("docs/library.md", 0): "tests/e2e/test_examples.py",  # examples/worker.py, shown as is
    ("docs/library.md", 4): "tests/unit/test_library_docs.py",
    ("docs/library.md", 5): "tests/unit/test_library_docs.py",
    ("docs/library.md", 6): "tests/unit/test_library_docs.py",
    ("docs/library.md", 7): "tests/unit/test_library_docs.py",
    ("docs/chat.md", 0): "tests/e2e/test_chat_recovery.py",
    ("docs/testing.md", 0): "tests/unit/test_testing_example.py",  # examples/test_emails.py
}


def test_every_python_example_in_the_docs_runs_or_says_why_not() -> None:
    blocks = [block for page in pages() for block in python_blocks(page)]
    unclaimed = [
        f"{b.page}:{b.line}"
        for b in blocks
        if b.fragment is None and (b.page, b.index) not in RUN_HERE | RUN_ELSEWHERE.keys()
    ]
    assert not unclaimed, f"examples no test runs (run them, or mark them): {unclaimed}"
    fragments = [b for b in blocks if b.fragment is not None]
    assert len(fragments) <= MAX_FRAGMENTS, [f"{b.page}:{b.line}" for b in fragments]
    assert all(len(b.fragment or "") > 20 for b in fragments), "a fragment says why"
    claimed = {(b.page, b.index) for b in blocks if b.fragment is None}
    assert RUN_HERE | RUN_ELSEWHERE.keys() <= claimed, "a claimed example moved or went"
    for (page, _), test in RUN_ELSEWHERE.items():
        assert Path(page).name in (ROOT / test).read_text(encoding="utf-8"), (page, test)


def page_script(page: str, *indexes: int) -> str:
    blocks = python_blocks(page)
    chosen = [blocks[i] for i in indexes] if indexes else blocks
    return "\n".join(block.code for block in chosen)


def run(
    script: str, cwd: Path, settings: Settings, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RABBITRY_")},
        "RABBITRY_NAMESPACE": settings.namespace,
        "RABBITRY_AMQP_URL": settings.amqp.url,
        "RABBITRY_DATA_DIR": str(cwd / "var"),
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.usefixtures("_broker_cleanup")
def test_the_outbox_page_stores_a_message_when_the_broker_is_switched_off(
    tmp_path: Path, settings: Settings
) -> None:
    done = run(page_script("docs/outbox.md"), tmp_path, settings)
    assert done.returncode == 0, done.stderr
    status, *rows = done.stdout.splitlines()
    assert status.startswith("persisted rabbit_active is false"), status
    assert len(rows) == 1 and " shipping_registered_publisher " in rows[0], rows
    assert rows[0].endswith(" False")


@pytest.mark.usefixtures("_broker_cleanup")
def test_the_message_format_page_decodes_and_publishes_as_it_says(
    tmp_path: Path, settings: Settings
) -> None:
    done = run(page_script("docs/message-format.md"), tmp_path, settings)
    assert done.returncode == 0, done.stderr
    # No pipeline exchange "amqp.default" on the test broker: refused, with the broker's words.
    assert "failed" in done.stdout.splitlines()[-1], done.stdout
    assert "amqp.default" in done.stdout.splitlines()[-1], done.stdout


@pytest.mark.parametrize("index", [0, 1], ids=["emitter", "orm"])
@pytest.mark.usefixtures("_broker_cleanup")
async def test_the_events_page_publishes_its_change_events(
    index: int, tmp_path: Path, settings: Settings
) -> None:
    await declare_system(settings, [])
    done = run(page_script("docs/events.md", index), tmp_path, settings)
    assert done.returncode == 0, done.stderr
    # Every event the example emitted reached the event-sourcing queue: none waits in the
    # outbox (the broker confirmed and routed each one).
    async with Database(f"sqlite+aiosqlite:///{tmp_path / 'var' / 'rabbitry.db'}") as db:
        assert await Outbox(db).count(RequeueFilter()) == 0
    received = await drain_ids(EventsLayout(settings.namespace).event_sourcing_queue)
    assert len(received) == 3, received  # insert, update, delete / insert, update, bulk update
    if index == 1:
        assert done.stdout.splitlines() == ["order 1"]


def test_the_architecture_pages_part_is_a_registry_entry(
    tmp_path: Path, settings: Settings
) -> None:
    script = page_script("docs/architecture.md") + "\nprint(billing.name, sorted(billing.services))"
    done = run(script, tmp_path, settings)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["billing ['invoicer']"]


def test_the_library_pages_message_and_topology_examples_run(
    tmp_path: Path, settings: Settings
) -> None:
    script = page_script("docs/library.md", 1, 2)
    script += "\nprint(message.type, message.tenant, sorted(q.name for q in topology.queues))"
    done = run(script, tmp_path, settings)
    assert done.returncode == 0, done.stderr
    queues = "['myapp.emails', 'myapp.emails.dlq', 'myapp.emails.retry.1000'"
    assert done.stdout.startswith(f"App\\Jobs\\SendEmail acme {queues}"), done.stdout


async def test_the_library_pages_publishing_example_publishes(
    tmp_path: Path, settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    queue = await plain_queue(declarer, settings, "emails")
    done = run(
        page_script("docs/library.md", 3),
        tmp_path,
        settings,
        AMQP_URL=settings.amqp.url,
        EMAILS_QUEUE=queue,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["published"] * 4
    assert len(await broker.get_all(queue)) == 4


@pytest.mark.usefixtures("_broker_cleanup")
def test_the_traces_page_shows_a_publish_and_its_process_span(
    tmp_path: Path, settings: Settings
) -> None:
    done = run(page_script("docs/observability.md"), tmp_path, settings)
    assert done.returncode == 0, done.stderr
    queue = f"{settings.namespace}.traced-orders"
    assert done.stdout.splitlines() == [f"publish {queue} PRODUCER", f"process {queue} CONSUMER"]


@pytest.mark.usefixtures("_broker_cleanup")
def test_the_library_page_adds_and_removes_subscriptions_of_a_running_worker(
    tmp_path: Path, settings: Settings
) -> None:
    text = (ROOT / "docs" / "library.md").read_text(encoding="utf-8")
    part = text[text.index("## Subscriptions at run time") : text.index("## Typed payloads")]
    (script,) = re.findall(r"```python\n(.*?)```", part, flags=re.S)
    done = run(script, tmp_path, settings)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["invoicing globex"]
