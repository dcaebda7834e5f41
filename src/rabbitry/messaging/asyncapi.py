"""A topology and its catalog as an AsyncAPI 3 document. Pure: data in, a JSON-ready dict out.

Every queue is a channel (``is: queue``) listing the messages that can reach it, its
arguments and its bindings (``x-rabbitry-arguments``, ``x-rabbitry-bindings``: AsyncAPI's AMQP
bindings have no field for either). Every route a message is published on (an exchange and a
routing key) is a channel too (``is: routingKey``), with a ``send`` operation per message kind;
the queues a Rabbitry process reads get a ``receive`` operation. Which messages reach a queue
follows the broker's rules (:mod:`rabbitry.messaging.routes`).

The RoadRunner headers (``rr_*``, docs/message-format.md) are one schema, with each header's
AMQP field type in ``x-amqp-field-type``: RoadRunner reads them by type tag, not by value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from rabbitry.messaging.catalog import Catalog, Destination, MessageKind
from rabbitry.messaging.envelope import (
    ATTEMPT_HEADER,
    CONTENT_TYPE,
    CORRELATION_HEADER,
    DEFAULT_PRIORITY,
    ERROR_HEADER,
    ORIGIN_QUEUE_HEADER,
    PERSISTENT,
    REASON_HEADER,
    RR_HEADERS,
    TENANT_HEADER,
    TRACEPARENT_HEADER,
)
from rabbitry.messaging.routes import PARAMETER, messages_by_queue
from rabbitry.messaging.topology import Binding, Exchange, ExchangeType, Queue, Topology

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING = "0.3.0"
HEADERS_SCHEMA = "RoadRunnerHeaders"

Document = dict[str, Any]

_RETRY = re.compile(r"^(?P<queue>.+)\.retry\.\d+$")
_UNSAFE_ID = re.compile(r"[^\w.\-]")


def _header(kind: str, tag: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "x-amqp-field-type": tag, "description": description, **extra}


def roadrunner_headers() -> dict[str, Any]:
    """The JSON Schema of Rabbitry's AMQP headers: the seven ``rr_*`` first, then the rest."""
    properties = {
        "rr_id": _header("string", "S", "Job id, a UUID; the message_id property too."),
        "rr_job": _header("string", "S", "Job name: the message type handlers are keyed by."),
        "rr_pipeline": _header("string", "S", "RoadRunner pipeline ('' when unset)."),
        "rr_headers": _header(
            "string",
            "x",
            "Byte array holding a compact UTF-8 JSON object of string lists ({} when empty).",
            contentMediaType="application/json",
        ),
        "rr_delay": _header("integer", "l", "Delay in seconds.", format="int64", minimum=0),
        "rr_priority": _header(
            "integer", "l", "Priority, lower first.", format="int64", default=DEFAULT_PRIORITY
        ),
        "rr_auto_ack": _header("boolean", "t", "true: acked on arrival (at most once)."),
        TENANT_HEADER: _header("string", "S", "The tenant the message belongs to."),
        CORRELATION_HEADER: _header("string", "S", "Correlation id (also the property)."),
        TRACEPARENT_HEADER: _header(
            "string",
            "S",
            "W3C trace context.",
            pattern="^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        ),
        ATTEMPT_HEADER: _header(
            "integer", "l", "Failed tries so far (retries and dead letters).", format="int64"
        ),
        REASON_HEADER: _header("string", "S", "Dead letters: why the message died."),
        ERROR_HEADER: _header("string", "S", "Retries and dead letters: 'ExceptionType: reason'."),
        ORIGIN_QUEUE_HEADER: _header("string", "S", "Dead letters: the queue it failed in."),
    }
    return {
        "type": "object",
        "description": "AMQP headers in RoadRunner's format (docs/message-format.md).",
        "properties": properties,
        "required": list(RR_HEADERS),
    }


def document(
    topology: Topology,
    catalog: Catalog,
    *,
    title: str,
    version: str,
    description: str = "",
    broker_url: str | None = None,
) -> Document:
    """The AsyncAPI 3 document of ``topology`` and the messages of ``catalog``.

    ``broker_url`` adds the broker's hosts as servers (never its credentials).
    """
    vhost = _vhost(broker_url)
    whole = topology | catalog.runtime
    reaching = messages_by_queue(whole, catalog.messages)
    ids = _Ids()
    channels: Document = {}
    queue_ids: dict[str, str] = {}
    for queue in sorted(whole.queues, key=lambda q: q.name):
        cid = queue_ids[queue.name] = ids.new(queue.name)
        channels[cid] = _queue_channel(
            queue, whole.bindings, reaching.get(queue.name, ()), catalog, vhost
        )
    operations = _send_operations(whole, catalog, channels, ids, vhost)
    for queue_name, reader in sorted(catalog.consumers.items()):
        if queue_name in queue_ids and reaching.get(queue_name):
            cid = queue_ids[queue_name]
            operations[ids.new(f"receive.{queue_name}")] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{cid}"},
                "summary": reader,
                "messages": [
                    {"$ref": f"#/channels/{cid}/messages/{key}"} for key in reaching[queue_name]
                ],
                "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
            }
    result: Document = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "defaultContentType": CONTENT_TYPE,
    }
    if broker_url is not None:
        result["servers"] = _servers(broker_url)
    result["channels"] = channels
    result["operations"] = operations
    result["components"] = {
        "schemas": {HEADERS_SCHEMA: roadrunner_headers()},
        "messages": {kind.key: _message(kind) for kind in catalog.messages},
    }
    return result


def _send_operations(
    topology: Topology, catalog: Catalog, channels: Document, ids: _Ids, vhost: str
) -> Document:
    """A channel per route messages are published on (added to ``channels``, with one for
    each exchange nothing is published to), and a ``send`` operation per message kind and
    route."""
    exchanges = {e.name: e for e in topology.exchanges}
    operations: Document = {}
    route_ids: dict[Destination, str] = {}
    for kind in catalog.messages:
        for index, target in enumerate(kind.destinations):
            if target not in route_ids:
                cid = route_ids[target] = ids.new(
                    f"{target.exchange or 'default'}.{target.routing_key}".rstrip(".")
                )
                channels[cid] = _route_channel(target, exchanges.get(target.exchange), vhost)
                channels[cid]["parameters"] = _parameters(target.routing_key, catalog)
            cid = route_ids[target]
            channels[cid]["messages"][kind.key] = _message_ref(kind.key)
            suffix = f".{index + 1}" if len(kind.destinations) > 1 else ""
            operations[ids.new(f"send.{kind.key}{suffix}")] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{cid}"},
                "summary": f"Publish {kind.title} to {target.exchange or 'the default exchange'}.",
                "messages": [{"$ref": f"#/channels/{cid}/messages/{kind.key}"}],
                "bindings": {
                    "amqp": {
                        "deliveryMode": PERSISTENT,
                        "mandatory": True,
                        "timestamp": True,
                        "bindingVersion": AMQP_BINDING,
                    }
                },
            }
    routed = {target.exchange for target in route_ids}
    for exchange in sorted(exchanges.values(), key=lambda e: e.name):
        if exchange.name not in routed:
            channels[ids.new(exchange.name)] = {
                "address": None,
                "description": "No Rabbitry message is published here with a known key.",
                "messages": {},
                "bindings": {"amqp": _exchange_binding(exchange, vhost)},
            }
    return operations


class _Ids:
    """Channel and operation ids: readable (the names themselves), unique, and within the
    characters AsyncAPI allows in a key."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def new(self, name: str) -> str:
        base = _UNSAFE_ID.sub("_", name.replace("{", "").replace("}", "")) or "default"
        candidate, n = base, 1
        while candidate in self._taken:
            n += 1
            candidate = f"{base}-{n}"
        self._taken.add(candidate)
        return candidate


def _queue_channel(
    queue: Queue,
    bindings: Iterable[Binding],
    messages: Iterable[str],
    catalog: Catalog,
    vhost: str,
) -> Document:
    channel: Document = {"address": queue.name}
    parameters = _parameters(queue.name, catalog)
    if parameters:
        channel["parameters"] = parameters
    retry = _RETRY.match(queue.name)
    if queue.name.endswith(".dlq"):
        channel["description"] = (
            "Dead letters: each copy carries x-rabbitry-reason, x-rabbitry-error, "
            "x-rabbitry-queue and x-rabbitry-attempt (or the broker's x-death)."
        )
    elif retry:
        channel["description"] = (
            f"A retry tier of {retry['queue']}: holds a failed message for its TTL, then "
            "dead-letters it back."
        )
    elif queue.name in catalog.consumers:
        channel["description"] = catalog.consumers[queue.name]
    channel["messages"] = {key: _message_ref(key) for key in messages}
    channel["bindings"] = {
        "amqp": {
            "is": "queue",
            "queue": {
                "name": queue.name,
                "durable": queue.durable,
                "exclusive": queue.exclusive,
                "autoDelete": queue.auto_delete,
                "vhost": vhost,
            },
            "bindingVersion": AMQP_BINDING,
        }
    }
    if queue.arguments:
        channel["x-rabbitry-arguments"] = {name: _plain(v) for name, v in queue.arguments}
    feeds = sorted(
        (
            {"exchange": b.exchange, "routingKey": b.routing_key}
            for b in bindings
            if b.queue == queue.name
        ),
        key=lambda b: (b["exchange"], b["routingKey"]),
    )
    if feeds:
        channel["x-rabbitry-bindings"] = feeds
    return channel


def _route_channel(target: Destination, exchange: Exchange | None, vhost: str) -> Document:
    if exchange is None:  # the default exchange, or one this deployment does not declare
        declared = Exchange(target.exchange, ExchangeType.DIRECT)
        binding = _exchange_binding(declared, vhost)
        if target.exchange == "":
            binding["exchange"]["type"] = "default"
    else:
        binding = _exchange_binding(exchange, vhost)
    return {
        "address": target.routing_key,
        "messages": {},
        "bindings": {"amqp": binding},
    }


def _exchange_binding(exchange: Exchange, vhost: str) -> dict[str, Any]:
    return {
        "is": "routingKey",
        "exchange": {
            "name": exchange.name,
            "type": exchange.type.value,
            "durable": exchange.durable,
            "autoDelete": exchange.auto_delete,
            "vhost": vhost,
        },
        "bindingVersion": AMQP_BINDING,
    }


def _parameters(address: str, catalog: Catalog) -> Document:
    return {
        name: {"description": catalog.parameters.get(name, "Filled in by the sender.")}
        for name in dict.fromkeys(PARAMETER.findall(address))
    }


def _message_ref(key: str) -> dict[str, str]:
    return {"$ref": f"#/components/messages/{key}"}


def _message(kind: MessageKind) -> Document:
    job: dict[str, Any] = (
        {"const": kind.type} if kind.type is not None else {"description": "Chosen by the sender."}
    )
    specific: dict[str, Any] = {"type": "object", "properties": {"rr_job": job}}
    if kind.pipeline:
        specific["properties"]["rr_pipeline"] = {"const": kind.pipeline}
    if kind.tenant:
        specific["required"] = [TENANT_HEADER]
    message: Document = {
        "name": kind.type if kind.type is not None else kind.key,
        "title": kind.title,
        "summary": kind.summary,
        "contentType": CONTENT_TYPE,
        "headers": {"allOf": [{"$ref": f"#/components/schemas/{HEADERS_SCHEMA}"}, specific]},
        "payload": dict(kind.payload),
        "correlationId": {"location": f"$message.header#/{CORRELATION_HEADER}"},
        "bindings": {"amqp": {"bindingVersion": AMQP_BINDING}},
    }
    if kind.example is not None:
        message["examples"] = [{"payload": kind.example}]
    return message


def _vhost(url: str | None) -> str:
    if url is None:
        return "/"
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _servers(url: str) -> Document:
    """One server per broker host of ``url`` (``h1:5672,h2:5672`` lists several); the user
    and password are left out."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2].split(",")
    vhost = _vhost(url)
    servers: Document = {}
    for index, host in enumerate(h for h in hosts if h):
        servers["broker" if index == 0 else f"broker-{index + 1}"] = {
            "host": host,
            "protocol": parts.scheme or "amqp",
            "protocolVersion": "0.9.1",
            "pathname": "/" if vhost == "/" else f"/{vhost}",
        }
    return servers


def _plain(value: Any) -> Any:
    if isinstance(value, bool | str | float) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    return str(value)
