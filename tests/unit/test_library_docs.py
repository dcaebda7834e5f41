"""The examples of docs/library.md from "Typed payloads" on, run as written, on the in-memory
broker: typed handlers, the two middleware examples, request/reply."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from rabbitry import (
    Message,
    Reject,
    RetryPolicy,
    Route,
    Subscription,
    Worker,
    dlq_name,
    work_queue,
)
from rabbitry.testing import MemoryBroker

PAGE = Path(__file__).parents[2] / "docs" / "library.md"


@pytest.fixture
def docs() -> dict[str, Any]:
    """The page's examples from "## Typed payloads" to "## Testing", run in one namespace."""
    text = PAGE.read_text(encoding="utf-8")
    part = text[text.index("## Typed payloads") : text.index("## Testing your handlers")]
    blocks = re.findall(r"```python\n(.*?)```", part, flags=re.S)
    assert len(blocks) == 4, "an example was added or lost: run it here too"
    namespace: dict[str, Any] = {"__name__": "library_docs"}
    for block in blocks:
        # dont_inherit: run as the reader would, without this module's __future__ import
        exec(compile(block, str(PAGE), "exec", dont_inherit=True), namespace)
    return namespace


def worker_for(subscription: Subscription, **kwargs: Any) -> Worker:
    topology = work_queue(subscription.queue, policy=RetryPolicy())
    return Worker("docs", [subscription], topology, **kwargs)


async def test_typed_handlers_get_a_validated_model_and_bad_payloads_are_dead_lettered(
    docs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    broker = MemoryBroker()
    orders: Subscription = docs["orders"]
    async with broker.running(worker_for(orders)), broker.publisher() as publisher:
        route = Route("", "shop.orders")
        good = Message("order.placed", docs["Order"](sku="tea", quantity=2))
        audited = Message("order.audited", {"sku": "tea", "quantity": 1}, tenant="acme")
        bad = Message("order.placed", {"sku": "tea", "quantity": 0})
        for message in (good, audited, bad):
            assert (await publisher.publish(message, route)).ok
        await broker.drain()
    assert capsys.readouterr().out.splitlines() == [
        "placing 2 tea",
        f"order {audited.id} of tenant acme",
    ]
    (dead,) = broker.get_all(dlq_name("shop.orders"))
    assert dead.headers["x-rabbitry-reason"] == (
        "payload is not a valid Order: quantity: Input should be greater than 0"
    )


async def test_the_context_middleware_logs_ids_and_carries_the_tenant_into_publishes(
    docs: dict[str, Any],
) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("library_docs.test")
    keep = Keep()
    keep.addFilter(docs["ContextFilter"]())
    log.addHandler(keep)
    broker = MemoryBroker(work_queue("shop.mails", policy=RetryPolicy()))
    context = docs["MessageContext"]()
    try:
        async with broker.publisher(middleware=[context]) as publisher:

            async def handle(message: Message) -> None:
                log.warning("handling")
                await publisher.publish(Message("mail", {}), Route("", "shop.mails"))

            sub = Subscription("shop.orders", default=handle)
            async with broker.running(worker_for(sub, middleware=[context])):
                incoming = Message("order.placed", {}, tenant="acme")
                assert (await publisher.publish(incoming, Route("", "shop.orders"))).ok
                await broker.drain()
            log.warning("outside")
    finally:
        log.removeHandler(keep)
    seen = [
        (r.getMessage(), getattr(r, "message_id", None), getattr(r, "tenant", None))
        for r in records
    ]
    assert seen == [
        ("handling", incoming.id, "acme"),
        ("outside", "-", "-"),
    ]
    (mail,) = broker.get_all("shop.mails")
    assert mail.message().tenant == "acme"


async def test_the_session_middleware_commits_what_a_handler_did_and_rolls_back_a_failure(
    docs: dict[str, Any], tmp_path: Path
) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}")
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE orders (sku TEXT)"))
    session = docs["session"]

    async def place(message: Message) -> None:
        await session.get().execute(
            sa.text("INSERT INTO orders VALUES (:sku)"), {"sku": message.payload}
        )
        if message.payload == "bad":
            raise Reject("half done")

    sessions = async_sessionmaker(engine)
    broker = MemoryBroker()
    sub = Subscription("shop.orders", default=place)
    try:
        middleware = [docs["SessionPerMessage"](sessions)]
        async with broker.running(worker_for(sub, middleware=middleware)):
            async with broker.publisher() as publisher:
                for sku in ("tea", "bad", "jam"):
                    assert (await publisher.publish(Message("o", sku), Route("", sub.queue))).ok
            await broker.drain()
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT sku FROM orders ORDER BY sku"))).all()
    finally:
        await engine.dispose()
    assert [row.sku for row in rows] == ["jam", "tea"]
    assert len(broker.get_all(dlq_name(sub.queue))) == 1


async def test_the_request_example_gets_its_quote(docs: dict[str, Any]) -> None:
    broker = MemoryBroker()
    async with broker.running(worker_for(docs["quotes"])), broker.publisher() as publisher:
        assert await docs["ask"](publisher) == 500
