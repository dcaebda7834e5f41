"""How RabbitMQ's exchanges pick queues for a routing key: pure functions, no state.

A topic binding key is a pattern of dot-separated words where ``*`` stands for exactly one
word and ``#`` for zero or more. As in RabbitMQ, the empty routing key has no words at all (it
matches ``#`` and the empty pattern, not ``*``), and ``"a."`` has two, ``"a"`` and ``""``.
"""

from __future__ import annotations

from rabbitry.messaging.topology import ExchangeType


def words(key: str) -> list[str]:
    return key.split(".") if key else []


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic binding with ``pattern`` takes a message sent with ``routing_key``."""
    want, have = words(pattern), words(routing_key)
    # reach[j]: the pattern read so far matches the first j words of the key.
    reach = [True] + [False] * len(have)
    for word in want:
        if word == "#":
            for j in range(1, len(reach)):
                reach[j] = reach[j] or reach[j - 1]
        else:
            reach = [False] + [
                reach[j] and (word == "*" or word == have[j]) for j in range(len(have))
            ]
    return reach[-1]


def binding_matches(kind: ExchangeType, binding_key: str, routing_key: str) -> bool:
    """Whether a binding of an exchange of type ``kind`` takes ``routing_key``."""
    if kind is ExchangeType.FANOUT:
        return True
    if kind is ExchangeType.DIRECT:
        return binding_key == routing_key
    if kind is ExchangeType.TOPIC:
        return topic_matches(binding_key, routing_key)
    raise ValueError(f"the in-memory broker does not route {kind.value} exchanges")
