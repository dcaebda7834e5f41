"""The AsyncAPI document of the topology: valid AsyncAPI 3 (the schema of npm's
``@asyncapi/specs``, vendored in tests/schemas/), complete (every exchange, queue and binding
the parts declare), and right about which messages reach which queue."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from helpers import schema_validator
from rabbitry.app.asyncapi import asyncapi_document
from rabbitry.app.registry import system_topology
from rabbitry.chat.catalog import gateway_queue_template
from rabbitry.config import ModuleConfig, Settings, load_settings
from rabbitry.messaging.envelope import RR_HEADERS
from rabbitry.messaging.routes import may_route
from rabbitry.messaging.settings import QueueType
from rabbitry.messaging.topology import ExchangeType
from rabbitry.sessions.catalog import tenant_queue_template
from rabbitry.sessions.topology import TenantsLayout

ASYNCAPI = schema_validator("asyncapi-3.0.0.json")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def settings(**values: Any) -> Settings:
    values.setdefault("amqp_url", SecretStr("amqp://u:p@127.0.0.1:5672/"))
    return Settings(namespace="shop", **values)


def problems(document: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in ASYNCAPI.iter_errors(document)
    ]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    if isinstance(node, dict) and set(node) == {"$ref"}:  # a reference to a reference
        return resolve(document, node["$ref"])
    return node


def queue_channel(document: dict[str, Any], name: str) -> dict[str, Any]:
    channel: dict[str, Any]
    (channel,) = [
        c
        for c in document["channels"].values()
        if c["bindings"]["amqp"]["is"] == "queue" and c["address"] == name
    ]
    return channel


def reaching(document: dict[str, Any], queue: str) -> set[str]:
    return {
        resolve(document, ref["$ref"])["name"]
        for ref in queue_channel(document, queue)["messages"].values()
    }


VARIANTS = {
    "defaults": {},
    "modules, quorum, tenants": {
        "modules": [
            ModuleConfig(name="billing", routing_keys=["invoice.*", "order.paid"]),
            ModuleConfig(name="audit", routing_keys=["#"]),
        ],
        "queue_type": QueueType.QUORUM,
    },
}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_document_is_valid_asyncapi_3(values: dict[str, Any]) -> None:
    document = asyncapi_document(settings(**values), tenants=["acme"])
    assert document["asyncapi"] == "3.0.0"
    assert problems(document) == []


def test_the_schema_check_itself_catches_a_broken_document() -> None:
    document = asyncapi_document(settings())
    channel = next(iter(document["channels"].values()))
    channel["bindings"]["amqp"]["exchange"] = {"name": "both queue and exchange"}
    del document["info"]["version"]
    assert len(problems(document)) == 2


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_exchange_queue_and_binding_of_the_parts_is_in_the_document(
    values: dict[str, Any],
) -> None:
    config = settings(**values)
    topology = system_topology(config, ["acme"])
    document = asyncapi_document(config, tenants=["acme"])
    channels = document["channels"].values()
    exchanges = {
        c["bindings"]["amqp"]["exchange"]["name"]
        for c in channels
        if c["bindings"]["amqp"]["is"] == "routingKey"
    }
    assert {e.name for e in topology.exchanges} <= exchanges
    for queue in topology.queues:
        amqp = queue_channel(document, queue.name)["bindings"]["amqp"]["queue"]
        assert (amqp["durable"], amqp["exclusive"], amqp["autoDelete"]) == (
            queue.durable,
            queue.exclusive,
            queue.auto_delete,
        )
        arguments = queue_channel(document, queue.name).get("x-rabbitry-arguments", {})
        assert arguments == {name: value for name, value in queue.arguments}
    for binding in topology.bindings:
        feeds = queue_channel(document, binding.queue)["x-rabbitry-bindings"]
        assert {"exchange": binding.exchange, "routingKey": binding.routing_key} in feeds


def test_queues_declared_at_run_time_appear_by_template_with_their_parameters() -> None:
    document = asyncapi_document(settings())
    tenant_queue = queue_channel(document, tenant_queue_template("shop"))
    assert tenant_queue["parameters"]["tenant"]["description"]
    assert tenant_queue["x-rabbitry-bindings"] == [
        {"exchange": "shop.tenants", "routingKey": "{tenant}.session-removal"}
    ]
    assert queue_channel(document, tenant_queue_template("shop") + ".dlq")
    gateway = queue_channel(document, gateway_queue_template("shop"))
    assert gateway["bindings"]["amqp"]["queue"]["exclusive"] is True
    assert set(gateway["parameters"]) == {"instance", "connection"}
    # The template names the queues the parts really declare.
    concrete = tenant_queue_template("shop").replace("{tenant}", "acme")
    assert concrete == TenantsLayout("shop").tenant_queue("acme")


def test_every_reference_resolves_and_every_address_parameter_is_declared() -> None:
    document = asyncapi_document(settings())
    for ref in refs(document):
        assert ref.startswith("#/"), ref
        resolve(document, ref)
    for cid, channel in document["channels"].items():
        used = set(re.findall(r"\{(\w+)\}", channel["address"] or ""))
        assert used == set(channel.get("parameters", {})), cid
    for oid, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), oid


def test_every_message_carries_the_roadrunner_headers_with_its_rr_job() -> None:
    document = asyncapi_document(settings())
    headers = document["components"]["schemas"]["RoadRunnerHeaders"]
    assert list(headers["properties"])[:7] == list(RR_HEADERS)
    assert headers["required"] == list(RR_HEADERS)
    tags = {name: spec["x-amqp-field-type"] for name, spec in headers["properties"].items()}
    assert tags["rr_headers"] == "x" and tags["rr_delay"] == tags["rr_priority"] == "l"
    assert tags["rr_auto_ack"] == "t" and tags["rr_job"] == "S"
    messages = document["components"]["messages"]
    types = {m["name"] for m in messages.values()}
    assert {"insert", "update", "delete", "session-removal", "session.revoked"} <= types
    assert "chat.message" in types
    for message in messages.values():
        base, specific = message["headers"]["allOf"]
        assert base == {"$ref": "#/components/schemas/RoadRunnerHeaders"}
        assert message["contentType"] == "application/json"
        if "const" in specific["properties"]["rr_job"]:
            assert specific["properties"]["rr_job"]["const"] == message["name"]
    removal = messages["sessions.session-removal"]
    assert removal["headers"]["allOf"][1]["required"] == ["x-tenant"]
    assert removal["payload"]["required"] == ["tenant", "user_id"]
    assert messages["events.update"]["payload"]["required"] == ["entity", "id", "user", "data"]
    assert messages["events.delete"]["payload"]["required"] == ["entity", "id", "user"]


def test_each_queue_lists_the_messages_the_broker_can_route_to_it() -> None:
    config = settings(modules=[ModuleConfig(name="billing", routing_keys=["invoice.*"])])
    document = asyncapi_document(config)
    changes = {"insert", "update", "delete"}
    assert reaching(document, "shop.event-sourcing.p0") == changes
    assert reaching(document, "shop.event-sourcing.p0.dlq") == changes
    assert reaching(document, "shop.event-sourcing.p0.retry.1000") == changes
    assert reaching(document, "shop.module.workflow") == {"events.module-message"}
    assert reaching(document, "shop.module.billing") == {"events.module-message"}
    assert reaching(document, tenant_queue_template("shop")) == {"session-removal"}
    assert reaching(document, gateway_queue_template("shop")) == {"chat.message"}
    assert reaching(document, "shop.chat.history") == {"chat.message"}
    revocations = "shop.chat.revocations.{instance}.{connection}"
    assert reaching(document, revocations) == {"session.revoked"}


def test_the_registry_queues_of_the_example_configuration_route_to_the_modules_that_bind_them() -> (
    None
):
    config = load_settings(EXAMPLES / "rabbitry.yaml")
    document = asyncapi_document(config)
    assert problems(document) == []
    crm = reaching(document, "rabbitry.module.crm")  # customer.*, invoice.paid
    assert crm == {"customer.created", "invoice.paid", "events.module-message"}
    billing = reaching(document, "rabbitry.module.billing")  # invoice.#, order.completed
    assert billing == {"invoice.paid", "events.module-message"}
    assert reaching(document, "rabbitry.module.mailer") == {  # *.created
        "customer.created",
        "events.module-message",
    }
    # A user's sessions removed by hand travel as DELETE /users/{id} sends them.
    removal = reaching(document, tenant_queue_template("rabbitry"))
    assert removal == {"session-removal"}
    manual = document["components"]["messages"]["outbox.user-revoke-sessions"]
    assert manual["title"] == "Revoke all sessions"
    assert "rabbitry.sessions.User" in manual["summary"]


def test_senders_and_the_processes_that_read_a_queue_are_operations() -> None:
    document = asyncapi_document(settings())
    operations = document["operations"].values()
    sent = {
        resolve(document, m["$ref"])["name"]: resolve(document, o["channel"]["$ref"])
        for o in operations
        if o["action"] == "send"
        for m in o["messages"]
    }
    removal = sent["session-removal"]
    assert removal["address"] == "{tenant}.session-removal"
    assert removal["bindings"]["amqp"]["exchange"] == {
        "name": "shop.tenants",
        "type": "direct",
        "durable": True,
        "autoDelete": False,
        "vhost": "/",
    }
    received = {
        resolve(document, o["channel"]["$ref"])["address"]
        for o in operations
        if o["action"] == "receive"
    }
    assert received == {
        "shop.event-sourcing.p0",
        "shop.module.workflow",
        tenant_queue_template("shop"),
        "shop.chat.history",
        gateway_queue_template("shop"),
        "shop.chat.revocations.{instance}.{connection}",
    }


def test_servers_are_the_broker_hosts_and_never_its_credentials() -> None:
    url = "amqps://admin:s3cret-pass@mq1.internal:5671,mq2.internal:5671/prod%2Fa"
    document = asyncapi_document(settings(amqp_url=SecretStr(url)))
    assert "s3cret" not in json.dumps(document) and "admin" not in json.dumps(document)
    assert document["servers"] == {
        "broker": {
            "host": "mq1.internal:5671",
            "protocol": "amqps",
            "protocolVersion": "0.9.1",
            "pathname": "/prod/a",
        },
        "broker-2": {
            "host": "mq2.internal:5671",
            "protocol": "amqps",
            "protocolVersion": "0.9.1",
            "pathname": "/prod/a",
        },
    }
    channel = next(iter(document["channels"].values()))
    assert channel["bindings"]["amqp"]["queue"]["vhost"] == "prod/a"
    assert "servers" not in asyncapi_document(settings(), servers=False)


@pytest.mark.parametrize(
    ("kind", "binding", "key", "routes"),
    [
        (ExchangeType.FANOUT, "", "anything", True),
        (ExchangeType.DIRECT, "acme.session-removal", "acme.session-removal", True),
        (ExchangeType.DIRECT, "acme.session-removal", "other.session-removal", False),
        (ExchangeType.DIRECT, "acme.session-removal", "{tenant}.session-removal", True),
        (ExchangeType.DIRECT, "{tenant}.{room}", "{tenant}.{room}", True),
        (ExchangeType.DIRECT, "{tenant}.{room}", "acme.lobby", True),
        (ExchangeType.DIRECT, "a.*", "a.b", False),
        (ExchangeType.TOPIC, "#", "insert", True),
        (ExchangeType.TOPIC, "invoice.*", "invoice.paid", True),
        (ExchangeType.TOPIC, "invoice.*", "invoice.paid.late", False),
        (ExchangeType.TOPIC, "invoice.#", "invoice", True),
        (ExchangeType.TOPIC, "*.paid", "{kind}.paid", True),
        (ExchangeType.TOPIC, "order.paid", "insert", False),
        (ExchangeType.TOPIC, "order.paid", "{routingKey}", True),
        # RabbitMQ's words: the empty key has none, so "*" wants one and "#" takes zero.
        (ExchangeType.TOPIC, "*", "", False),
        (ExchangeType.TOPIC, "#", "", True),
        (ExchangeType.TOPIC, "a.*", "a.", True),
    ],
)
def test_may_route_follows_the_exchange_types_rules(
    kind: ExchangeType, binding: str, key: str, routes: bool
) -> None:
    assert may_route(kind, binding, key) is routes
