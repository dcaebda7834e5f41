"""The dashboard's last minutes: a ring buffer of readings and the JSON document its charts draw.

Pure: :mod:`rabbitry.backoffice.sampler` takes a :class:`Reading` every few seconds (the
broker's figures by passive declare, the outbox, Rabbitry's own counters); this module keeps
the last ``capacity`` of them and turns them into series. Counters (published, delivered,
acked, relayed) become rates between consecutive readings; a counter that went down (a process
restarted) gives no rate for that step rather than a negative one.

The document is bounded: at most ``capacity`` points per series and :data:`MAX_SERIES` series
per chart (the busiest ones, by their latest figure), whatever the number of tenants.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

MAX_SERIES = 12  # lines per chart: more is unreadable, and the document stays small
CounterKey = tuple[str, str]  # (metric, label value): ("published", "<ns>.events")


@dataclass(frozen=True, slots=True)
class QueueSample:
    depth: int | None  # None: not declared on the broker
    consumers: int | None
    dead_letters: int | None  # None: no dead-letter queue


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything the dashboard saw at ``at`` (Unix seconds)."""

    at: float
    queues: Mapping[str, QueueSample] = field(default_factory=dict)
    tenants: Mapping[str, int] = field(default_factory=dict)  # DISPATCH lag: tenant queue depth
    event_store: int | None = None  # messages waiting for the event store (its queue's depth)
    pending: Mapping[str, int] = field(default_factory=dict)  # outbox rows by origin
    counters: Mapping[CounterKey, float] = field(default_factory=dict)  # cumulative
    gateways: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # (sockets, rooms)
    problems: tuple[str, ...] = ()  # what could not be read this time, one line each


def counter_totals(
    samples: Iterable[tuple[str, Mapping[str, str], float]],
) -> dict[CounterKey, float]:
    """Rabbitry's counters from Prometheus samples (name, labels, value), summed over the
    processes they came from, keyed as the dashboard charts them."""
    wanted = {
        "rabbitry_published_total": ("published", "target"),
        "rabbitry_consumed_total": ("delivered", "queue"),
        "rabbitry_acked_total": ("acked", "queue"),
        "rabbitry_dead_lettered_total": ("dead_lettered", "queue"),
        "rabbitry_relayed_total": ("relayed", ""),
        "rabbitry_relay_failed_total": ("relay_failed", ""),
    }
    totals: dict[CounterKey, float] = {}
    for name, labels, value in samples:
        kind = wanted.get(name)
        if kind is None:
            continue
        key = (kind[0], labels.get(kind[1], "") if kind[1] else "")
        totals[key] = totals.get(key, 0.0) + value
    return totals


def gateway_gauges(
    samples: Iterable[tuple[str, Mapping[str, str], float]],
) -> dict[str, tuple[int, int]]:
    """Each chat gateway's (sockets, rooms) from Prometheus samples."""
    sockets: dict[str, int] = {}
    rooms: dict[str, int] = {}
    for name, labels, value in samples:
        if name == "rabbitry_chat_sockets":
            sockets[labels.get("gateway", "")] = int(value)
        elif name == "rabbitry_chat_rooms":
            rooms[labels.get("gateway", "")] = int(value)
    return {g: (sockets.get(g, 0), rooms.get(g, 0)) for g in sorted(sockets.keys() | rooms.keys())}


class Series:
    """The last ``capacity`` readings, oldest first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("a series needs room for two readings (a rate is a difference)")
        self._readings: deque[Reading] = deque(maxlen=capacity)

    def add(self, reading: Reading) -> None:
        self._readings.append(reading)

    def __len__(self) -> int:
        return len(self._readings)

    @property
    def latest(self) -> Reading | None:
        return self._readings[-1] if self._readings else None

    def document(self, interval: float) -> dict[str, Any]:
        """The JSON the dashboard polls: times, and per chart a mapping of line -> values."""
        readings = list(self._readings)
        latest = readings[-1] if readings else Reading(at=0.0)
        queue_names = _names(r.queues for r in readings)
        depth = {q: [_field(r.queues.get(q), "depth") for r in readings] for q in queue_names}
        return {
            "interval": interval,
            "capacity": self._readings.maxlen,
            "t": [r.at for r in readings],
            "depth": _busiest(depth),
            "consumers": _busiest(
                {q: [_field(r.queues.get(q), "consumers") for r in readings] for q in queue_names}
            ),
            "dead_letters": _busiest(
                {
                    q: [_field(r.queues.get(q), "dead_letters") for r in readings]
                    for q in queue_names
                    if any(
                        r.queues.get(q) and r.queues[q].dead_letters is not None for r in readings
                    )
                }
            ),
            "published": _busiest(_rates(readings, "published")),
            "delivered": _busiest(_rates(readings, "delivered")),
            "acked": _busiest(_rates(readings, "acked")),
            "outbox": {
                origin: [r.pending.get(origin) for r in readings]
                for origin in _names(r.pending for r in readings)
            },
            "relay": {
                "relayed/s": _rates(readings, "relayed").get("", []),
                "failed/s": _rates(readings, "relay_failed").get("", []),
            },
            "tenant_lag": _busiest(
                {
                    t: [r.tenants.get(t) for r in readings]
                    for t in _names(r.tenants for r in readings)
                }
            ),
            "event_store_lag": {"waiting": [r.event_store for r in readings]},
            "gateways": {
                "sockets": {g: s for g, (s, _) in latest.gateways.items()},
                "rooms": {g: n for g, (_, n) in latest.gateways.items()},
            },
            "gateway_sockets": _busiest(
                {
                    g: [_gateway(r, g, 0) for r in readings]
                    for g in _names(r.gateways for r in readings)
                }
            ),
            "problems": list(latest.problems),
        }


def _names(mappings: Iterable[Mapping[Any, Any]]) -> list[str]:
    return sorted({str(k) for m in mappings for k in m})


def _field(sample: QueueSample | None, name: str) -> int | None:
    return None if sample is None else getattr(sample, name)


def _gateway(reading: Reading, name: str, index: int) -> int | None:
    figures = reading.gateways.get(name)
    return None if figures is None else figures[index]


def _rates(readings: list[Reading], metric: str) -> dict[str, list[float | None]]:
    """Per label, the counter's rate per second over each step (None for the first point, a
    missing counter or one that went down)."""
    labels = sorted({label for r in readings for (m, label) in r.counters if m == metric})
    result: dict[str, list[float | None]] = {}
    for label in labels:
        values: list[float | None] = [None]
        for before, after in pairwise(readings):
            a = before.counters.get((metric, label))
            b = after.counters.get((metric, label))
            span = after.at - before.at
            if a is None or b is None or b < a or span <= 0:
                values.append(None)
            else:
                values.append(round((b - a) / span, 3))
        result[label] = values[: len(readings)]
    return result


def _busiest(
    lines: Mapping[str, list[int | None]] | Mapping[str, list[float | None]],
) -> dict[str, list[Any]]:
    """At most :data:`MAX_SERIES` lines: the highest by their latest (then peak) value."""

    def weight(item: tuple[str, list[Any]]) -> tuple[float, float, str]:
        values = [v for v in item[1] if v is not None]
        last = item[1][-1] if item[1] and item[1][-1] is not None else 0
        return (-float(last), -float(max(values, default=0)), item[0])

    chosen = sorted(lines.items(), key=weight)[:MAX_SERIES]
    return dict(sorted(chosen))
