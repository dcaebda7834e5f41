"""A topology and its catalog as an AsyncAPI 3 document. Pure: data in, a JSON-ready dict out.

Every queue is a channel (``is: queue``) listing the messages that can reach it, its
arguments and its bindings (``x-rabbitry-arguments``, ``x-rabbitry-bindings``: AsyncAPI's AMQP
bindings have no field for either). Every route a message is published on (an exchange and a
routing key) is a channel too (``is: routingKey``), with a ``send`` operation per message kind;
the queues a Rabbitry process reads get a ``receive`` operation. Which messages reach a queue
follows the broker's rules: the bindings (fanout: all; direct: equal keys; topic: the ``*`` and
``#`` patterns, a ``{parameter}`` standing for any word), then dead-lettering (``Q`` to
``Q.dlq``) and the retry tiers (``Q.retry.<ms>`` holds ``Q``'s messages).

The RoadRunner headers (``rr_*``, docs/message-format.md) are one schema, with each header's
AMQP field type in ``x-amqp-field-type``: RoadRunner reads them by type tag, not by value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
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
from rabbitry.messaging.topology import Binding, Exchange, ExchangeType, Queue, Topology

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING = "0.3.0"
HEADERS_SCHEMA = "RoadRunnerHeaders"

Document = dict[str, Any]

_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
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
    exchanges = {e.name: e for e in whole.exchanges}
    kinds = {kind.key: kind for kind in catalog.messages}
    reaching = _messages_by_queue(whole, catalog.messages, exchanges)
    ids = _Ids()
    channels: Document = {}
    operations: Document = {}

    queue_ids: dict[str, str] = {}
    for queue in sorted(whole.queues, key=lambda q: q.name):
        cid = queue_ids[queue.name] = ids.new(queue.name)
        channels[cid] = _queue_channel(
            queue, whole.bindings, reaching.get(queue.name, ()), catalog, vhost
        )

    routed: set[str] = set()
    route_ids: dict[Destination, str] = {}
    for kind in catalog.messages:
        for index, target in enumerate(kind.destinations):
            if target not in route_ids:
                cid = route_ids[target] = ids.new(
                    f"{target.exchange or 'default'}.{target.routing_key}".rstrip(".")
                )
                channels[cid] = _route_channel(target, exchanges.get(target.exchange), vhost)
                channels[cid]["parameters"] = _parameters(target.routing_key, catalog)
                routed.add(target.exchange)
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
    for exchange in sorted(exchanges.values(), key=lambda e: e.name):
        if exchange.name not in routed:
            channels[ids.new(exchange.name)] = {
                "address": None,
                "description": "No Rabbitry message is published here with a known key.",
                "messages": {},
                "bindings": {"amqp": _exchange_binding(exchange, vhost)},
            }

    for queue_name, reader in sorted(catalog.consumers.items()):
        queue_id = queue_ids.get(queue_name)
        if queue_id is None or not reaching.get(queue_name):
            continue
        operations[ids.new(f"receive.{queue_name}")] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{queue_id}"},
            "summary": reader,
            "messages": [
                {"$ref": f"#/channels/{queue_id}/messages/{key}"} for key in reaching[queue_name]
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
        "messages": {key: _message(kind) for key, kind in kinds.items()},
    }
    return result


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


def _messages_by_queue(
    topology: Topology, kinds: Iterable[MessageKind], exchanges: Mapping[str, Exchange]
) -> dict[str, tuple[str, ...]]:
    """For each queue, the keys of the message kinds that can reach it."""
    found: dict[str, list[str]] = {}

    def add(queue: str, keys: Iterable[str]) -> bool:
        current = found.setdefault(queue, [])
        new = [k for k in keys if k not in current]
        current.extend(new)
        return bool(new)

    queues = {q.name: q for q in topology.queues}
    for kind in kinds:
        for target in kind.destinations:
            if target.exchange == "":  # the default exchange: the key is the queue
                if target.routing_key in queues:
                    add(target.routing_key, [kind.key])
                continue
            exchange = exchanges.get(target.exchange)
            kind_of = exchange.type if exchange else ExchangeType.TOPIC
            for binding in topology.bindings:
                if binding.exchange == target.exchange and may_route(
                    kind_of, binding.routing_key, target.routing_key
                ):
                    add(binding.queue, [kind.key])
    changed = True
    while changed:  # retry tiers hold their queue's messages; dead-lettering moves them on
        changed = False
        for queue in queues.values():
            retry = _RETRY.match(queue.name)
            if retry and retry["queue"] in found:
                changed |= add(queue.name, found[retry["queue"]])
            arguments = queue.argument_map()
            dead = arguments.get("x-dead-letter-routing-key")
            if arguments.get("x-dead-letter-exchange") == "" and dead in queues:
                changed |= add(str(dead), found.get(queue.name, ()))
    return {queue: tuple(keys) for queue, keys in found.items() if keys}


def may_route(kind: ExchangeType, binding_key: str, routing_key: str) -> bool:
    """Whether an exchange of ``kind`` can route a message sent with ``routing_key`` through a
    binding with ``binding_key``; a ``{parameter}`` is any one word, and a key that is only a
    parameter is any key at all."""
    if kind in (ExchangeType.FANOUT, ExchangeType.HEADERS):
        return True
    if _PARAMETER.fullmatch(routing_key):
        return True
    if kind is ExchangeType.DIRECT:
        return _words_match(_template_words(binding_key), routing_key.split("."), topic=False)
    return _words_match(_template_words(binding_key), routing_key.split("."), topic=True)


_ANY_WORD = "\0"  # a binding key's {parameter}: no real key holds NUL


def _template_words(key: str) -> list[str]:
    return [_ANY_WORD if _PARAMETER.fullmatch(word) else word for word in key.split(".")]


def _words_match(pattern: list[str], words: list[str], *, topic: bool) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if topic and head == "#":
        return any(_words_match(rest, words[i:], topic=topic) for i in range(len(words) + 1))
    if not words:
        return False
    word = words[0]
    one = (
        head in (word, _ANY_WORD)
        or _PARAMETER.fullmatch(word) is not None
        or (topic and head == "*")
    )
    return one and _words_match(rest, words[1:], topic=topic)


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
        for name in dict.fromkeys(_PARAMETER.findall(address))
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
