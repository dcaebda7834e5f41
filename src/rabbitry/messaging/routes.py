"""Which queues a message can reach: RabbitMQ's routing rules over a topology, for documents.
Pure, no I/O.

Routing keys and binding keys may hold ``{parameters}`` (a tenant, a room): a parameter stands
for any one word, and a routing key that is nothing but a parameter for any key at all. Then
the broker's own rules: a fanout exchange takes every binding, a direct one equal keys, a topic
one the ``*`` (one word) and ``#`` (zero or more words) patterns. Past the bindings, a queue
that dead-letters through the default exchange hands its messages to that queue (``Q`` to
``Q.dlq``), and a retry tier ``Q.retry.<ms>`` holds ``Q``'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rabbitry.messaging.catalog import MessageKind
from rabbitry.messaging.topology import ExchangeType, Topology

PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RETRY = re.compile(r"^(?P<queue>.+)\.retry\.\d+$")
_ANY_WORD = "\0"  # a binding key's {parameter}; no real key holds NUL


def messages_by_queue(
    topology: Topology, kinds: Iterable[MessageKind]
) -> dict[str, tuple[str, ...]]:
    """For each queue of ``topology``, the keys of the message kinds that can reach it."""
    found: dict[str, list[str]] = {}

    def add(queue: str, keys: Iterable[str]) -> bool:
        current = found.setdefault(queue, [])
        new = [k for k in keys if k not in current]
        current.extend(new)
        return bool(new)

    queues = {q.name: q for q in topology.queues}
    types = {e.name: e.type for e in topology.exchanges}
    for kind in kinds:
        for target in kind.destinations:
            if target.exchange == "":  # the default exchange: the key names the queue
                if target.routing_key in queues:
                    add(target.routing_key, [kind.key])
                continue
            exchange = types.get(target.exchange, ExchangeType.TOPIC)
            for binding in topology.bindings:
                if binding.exchange == target.exchange and may_route(
                    exchange, binding.routing_key, target.routing_key
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
    binding with ``binding_key``."""
    if kind in (ExchangeType.FANOUT, ExchangeType.HEADERS):
        return True
    if PARAMETER.fullmatch(routing_key):
        return True
    pattern = [_ANY_WORD if PARAMETER.fullmatch(w) else w for w in _words(binding_key)]
    return _match(pattern, _words(routing_key), topic=kind is ExchangeType.TOPIC)


def _words(key: str) -> list[str]:
    # As RabbitMQ splits them: the empty key has no words, "a." has two.
    return key.split(".") if key else []


def _match(pattern: list[str], words: list[str], *, topic: bool) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if topic and head == "#":
        return any(_match(rest, words[i:], topic=topic) for i in range(len(words) + 1))
    if not words:
        return False
    word = words[0]
    one = head in (word, _ANY_WORD) or PARAMETER.fullmatch(word) is not None
    return (one or (topic and head == "*")) and _match(rest, words[1:], topic=topic)
