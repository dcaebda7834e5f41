"""The AsyncAPI document tells the truth about routing: each message, published on each route the
document gives it, reaches exactly the queues the document lists for it, on the real broker."""

from __future__ import annotations

import itertools
import json
import re

import pika.exceptions  # type: ignore[import-untyped]  # pika ships no type hints

from conftest import BrokerProbe
from rabbitry.app.asyncapi import asyncapi_document
from rabbitry.app.registry import system_topology
from rabbitry.config import ModuleConfig, RegistryEntry, Settings
from rabbitry.messaging import Declarer

# What a {parameter} of a routing key stands for, in this test: several module keys, so that
# each module's bindings are exercised, and the one tenant whose queue is declared.
SAMPLES = {
    "tenant": ["acme"],
    "room": ["lobby"],
    "routingKey": ["invoice.paid", "invoice.paid.late", "customer.created", "misc"],
}
_PARAMETER = re.compile(r"\{(\w+)\}")


def keys_for(template: str) -> list[str]:
    names = _PARAMETER.findall(template)
    keys = []
    for values in itertools.product(*(SAMPLES[name] for name in names)):
        keys.append(template.format(**dict(zip(names, values, strict=True))))
    return keys


async def test_each_message_reaches_the_queues_the_document_lists_and_no_other(
    settings: Settings, declarer: Declarer, broker: BrokerProbe
) -> None:
    ns = settings.namespace
    config = settings.model_copy(
        update={
            "modules": [
                ModuleConfig(name="billing", routing_keys=["invoice.*"]),
                ModuleConfig(name="mailer", routing_keys=["*.created"]),
                ModuleConfig(name="audit", routing_keys=["#"]),
            ],
            "queues": [
                RegistryEntry(
                    name="customer-created",
                    exchange=f"{ns}.modules",
                    routing_key="customer.created",
                ),
                RegistryEntry(
                    name="revoke",
                    exchange=f"{ns}.tenants",
                    routing_key="{tenant}.session-removal",
                    message_type="session-removal",
                ),
            ],
        }
    )
    topology = system_topology(config, ["acme"])
    await declarer.declare(topology)
    document = asyncapi_document(config, tenants=["acme"])
    channels = document["channels"]
    work_queues = {
        q.name for q in topology.queues if not q.name.endswith(".dlq") and ".retry." not in q.name
    }
    documented = {
        (channel["address"], key)
        for channel in channels.values()
        if channel["bindings"]["amqp"]["is"] == "queue" and channel["address"] in work_queues
        for key in channel["messages"]
    }

    published = 0
    for operation in document["operations"].values():
        if operation["action"] != "send":
            continue
        channel = channels[operation["channel"]["$ref"].removeprefix("#/channels/")]
        exchange = channel["bindings"]["amqp"]["exchange"]["name"]
        (message,) = operation["messages"]
        key = message["$ref"].rsplit("/", 1)[1]
        for routing_key in keys_for(channel["address"]):
            if not any(
                b.exchange == exchange and b.queue in work_queues for b in topology.bindings
            ):
                continue  # only queues made at run time listen there (gateways)
            body = json.dumps({"kind": key, "key": routing_key}).encode()
            try:
                await broker.publish(exchange, routing_key, body, headers={"rr_job": key})
                published += 1
            except pika.exceptions.UnroutableError:
                pass  # no binding hears this sample key: the comparison below counts it
    assert published >= 10

    observed: set[tuple[str, str]] = set()
    for queue in sorted(work_queues):
        for received in await broker.get_all(queue):
            observed.add((queue, json.loads(received.body)["kind"]))
    assert observed == documented
    # The sample keys exercise every module's bindings, and the parts' own queues.
    assert (f"{ns}.module.billing", "events.module-message") in observed
    assert (f"{ns}.module.mailer", "outbox.customer-created") in observed
    assert (f"{ns}.tenant.acme.removals", "outbox.revoke") in observed
    assert (f"{ns}.event-sourcing.p0", "events.update") in observed
    assert (f"{ns}.chat.history", "chat.message") in observed
