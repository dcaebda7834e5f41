"""Module routing with the shipped example configuration: each module's queue gets the
messages whose routing keys it declared; the workflow module hears every one and logs it."""

from __future__ import annotations

import uuid
from pathlib import Path

from helpers import AMQP_URL, delete_namespace, eventually_true, running, take_all
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings, load_settings
from rabbitry.events.message_log import MessageLog
from rabbitry.events.topology import EventsLayout, events_topology, module_topology
from rabbitry.events.workflow import WorkflowWorker
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishStatus, Route
from rabbitry.storage.database import Database

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "rabbitry.yaml"

# routing key -> the modules (besides workflow) whose queues must get it
EXPECTED = {
    "customer.created": {"crm", "mailer"},
    "invoice.paid": {"crm", "billing"},
    "invoice.refund.issued": {"billing"},
    "order.completed": {"billing"},
    "customer.vip.created": set(),  # "*" is one word: neither customer.* nor *.created
    "audit.login": set(),
}


async def test_modules_hear_their_routing_keys_and_workflow_hears_everything(
    events_db: Database,
) -> None:
    settings = load_settings(
        EXAMPLE,
        namespace=f"t{uuid.uuid4().hex[:12]}",
        amqp_url=AMQP_URL,
        retry_base_delay=0.05,
    )
    assert {m.name for m in settings.modules} == {"crm", "billing", "mailer"}
    layout = EventsLayout(settings.namespace)
    topology = module_topology(settings, settings.modules) | events_topology(settings)
    try:
        async with running(WorkflowWorker(settings, events_db)):
            url = settings.amqp_url.get_secret_value()
            async with await Declarer.connect(url) as declarer:
                await declarer.declare(topology)
            sent: dict[str, str] = {}
            async with Publisher(settings.amqp) as publisher:
                for key in EXPECTED:
                    message = Message(key, {"key": key})
                    result = await publisher.publish(message, Route(layout.modules_exchange, key))
                    assert result.status is PublishStatus.PUBLISHED
                    sent[message.id] = key
            log = MessageLog(events_db)

            async def all_logged() -> bool:
                return len(await log.recent()) == len(EXPECTED)

            await eventually_true(all_logged, what="the workflow module's message log")
            entries = await log.recent()
            assert {e.message_id: e.type for e in entries} == sent
            assert {e.message_id: (e.exchange, e.routing_key) for e in entries} == {
                message_id: (layout.modules_exchange, key) for message_id, key in sent.items()
            }
            for module in ("crm", "billing", "mailer"):
                got = await take_all(layout.module_queue(module))
                expected = {key for key, modules in EXPECTED.items() if module in modules}
                assert {m.headers["rr_job"] for m in got} == expected, module
    finally:
        await delete_namespace(settings.namespace)


async def test_the_message_log_keeps_the_routing_key_a_message_was_published_with(
    events_settings: Settings, events_db: Database
) -> None:
    layout = EventsLayout(events_settings.namespace)
    async with running(WorkflowWorker(events_settings, events_db)):
        # The type says what happened; the routing key is where it was sent: both are kept.
        message = Message("invoice.created", {"invoice": 12}, tenant="acme")
        async with Publisher(events_settings.amqp) as publisher:
            result = await publisher.publish(
                message, Route(layout.modules_exchange, "billing.invoice")
            )
        assert result.status is PublishStatus.PUBLISHED
        log = MessageLog(events_db)

        async def logged() -> bool:
            return any(e.message_id == message.id for e in await log.recent())

        await eventually_true(logged, what="the logged message")
    (entry,) = await log.recent()
    assert (entry.exchange, entry.routing_key) == (
        f"{events_settings.namespace}.modules",
        "billing.invoice",
    )
    assert (entry.type, entry.tenant, entry.payload) == ("invoice.created", "acme", {"invoice": 12})
