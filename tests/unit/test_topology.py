"""Topology as data: work queues with their DLQ and retry tiers, name checks, the system layout."""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Callable

import pytest

from rabbitry.amqp.fieldtable import Int64, encode_value
from rabbitry.app.registry import system_topology
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import ModuleConfig, Settings
from rabbitry.events.topology import ALL_KEYS, EventsLayout, partition_keys, stale_keys
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.settings import QueueType
from rabbitry.messaging.topology import (
    DELIVERY_LIMIT,
    Binding,
    Exchange,
    ExchangeType,
    Queue,
    Topology,
    check_name,
    check_routing_key,
    dlq_name,
    retry_queue_name,
    work_queue,
)
from rabbitry.sessions.topology import TenantsLayout

POLICY = RetryPolicy(max_attempts=4, base_delay=1, factor=5, max_delay=60)  # tiers 1s 5s 25s


@pytest.fixture(autouse=True)
def _no_rabbitry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.upper().startswith("RABBITRY_")]:
        monkeypatch.delenv(name)


def queues_by_name(topology: Topology) -> dict[str, Queue]:
    return {queue.name: queue for queue in topology.queues}


# --- work queues ----------------------------------------------------------------------------


def test_work_queue_brings_its_dlq_and_one_retry_queue_per_tier() -> None:
    names = set(queues_by_name(work_queue("orders", policy=POLICY)))
    assert names == {
        "orders",
        "orders.dlq",
        "orders.retry.1000",
        "orders.retry.5000",
        "orders.retry.25000",
    }
    assert dlq_name("orders") == "orders.dlq"
    assert retry_queue_name("orders", 5000) == "orders.retry.5000"


def test_work_queue_dead_letters_into_its_dlq_through_the_default_exchange() -> None:
    main = queues_by_name(work_queue("orders", policy=POLICY))["orders"]
    assert main.argument_map() == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "orders.dlq",
    }
    assert (main.durable, main.exclusive, main.auto_delete) == (True, False, False)


def test_dlq_is_durable_and_does_not_dead_letter_again() -> None:
    dead = queues_by_name(work_queue("orders", policy=POLICY))["orders.dlq"]
    assert dead.durable
    assert dead.argument_map() == {}


@pytest.mark.parametrize("delay", [1000, 5000, 25000])
def test_retry_queue_holds_for_its_ttl_then_returns_to_the_work_queue(delay: int) -> None:
    retry = queues_by_name(work_queue("orders", policy=POLICY))[f"orders.retry.{delay}"]
    arguments = retry.argument_map()
    assert arguments == {
        "x-message-ttl": delay,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "orders",
    }
    ttl = arguments["x-message-ttl"]
    assert isinstance(ttl, Int64)
    assert encode_value(ttl) == b"l" + struct.pack(">q", delay)
    assert retry.durable


def test_quorum_adds_the_queue_type_to_every_queue() -> None:
    topology = work_queue("orders", policy=POLICY, queue_type=QueueType.QUORUM)
    assert len(topology.queues) == 5
    for queue in topology.queues:
        assert queue.argument_map()["x-queue-type"] == "quorum"
    main = queues_by_name(topology)["orders"]
    assert main.argument_map()["x-dead-letter-routing-key"] == "orders.dlq"


def test_quorum_work_and_retry_queues_dead_letter_at_least_once_with_a_delivery_limit() -> None:
    queues = queues_by_name(work_queue("orders", policy=POLICY, queue_type=QueueType.QUORUM))
    for name in ("orders", *(n for n in queues if ".retry." in n)):
        arguments = queues[name].argument_map()
        assert arguments["x-dead-letter-strategy"] == "at-least-once", name
        # RabbitMQ falls back to at-most-once without reject-publish.
        assert arguments["x-overflow"] == "reject-publish", name
        assert arguments["x-delivery-limit"] == DELIVERY_LIMIT, name


def test_the_quorum_dead_letter_queue_has_no_delivery_limit_and_dead_letters_nowhere() -> None:
    dead = queues_by_name(work_queue("orders", policy=POLICY, queue_type=QueueType.QUORUM))[
        "orders.dlq"
    ]
    assert dead.argument_map() == {"x-queue-type": "quorum"}


def test_the_delivery_limit_is_the_callers_to_choose_and_at_least_one() -> None:
    queues = queues_by_name(
        work_queue("orders", policy=POLICY, queue_type=QueueType.QUORUM, delivery_limit=3)
    )
    assert queues["orders"].argument_map()["x-delivery-limit"] == 3
    with pytest.raises(ValueError, match="delivery_limit"):
        work_queue("orders", policy=POLICY, delivery_limit=0)


def test_classic_queues_carry_no_queue_type() -> None:
    for queue in work_queue("orders", policy=POLICY).queues:
        assert "x-queue-type" not in queue.argument_map()


def test_work_queue_bindings_feed_the_work_queue_only() -> None:
    topology = work_queue(
        "orders", policy=POLICY, bindings=[("shop", "order.*"), ("shop", "refund.#")]
    )
    assert topology.bindings == {
        Binding("shop", "orders", "order.*"),
        Binding("shop", "orders", "refund.#"),
    }
    assert topology.exchanges == frozenset()


def test_arguments_are_stored_sorted_so_specs_compare_equal() -> None:
    main = queues_by_name(work_queue("orders", policy=POLICY, queue_type=QueueType.QUORUM))[
        "orders"
    ]
    names = [name for name, _ in main.arguments]
    assert names == sorted(names)


# --- topology values ----------------------------------------------------------------------------


def test_equal_topologies_are_equal_and_hash_alike() -> None:
    first = work_queue("orders", policy=POLICY, bindings=[("shop", "order.*")])
    second = work_queue("orders", policy=POLICY, bindings=[("shop", "order.*")])
    assert first == second
    assert hash(first) == hash(second)
    assert len({first, second}) == 1


def test_different_policies_give_different_topologies() -> None:
    assert work_queue("orders", policy=POLICY) != work_queue("orders", policy=RetryPolicy())


def test_merging_is_a_set_union() -> None:
    shop = Exchange("shop")
    orders = work_queue("orders", policy=POLICY) | Topology.of(exchanges=[shop])
    refunds = work_queue("refunds", policy=POLICY) | Topology.of(exchanges=[shop])
    merged = orders | refunds
    assert merged == refunds | orders
    assert merged | orders == merged
    assert merged.exchanges == {shop}
    assert len(merged.queues) == 10


def test_empty_topology_is_the_merge_identity() -> None:
    orders = work_queue("orders", policy=POLICY)
    assert Topology() | orders == orders
    assert Topology.of() == Topology()


def test_specs_are_frozen_with_safe_defaults() -> None:
    exchange = Exchange("shop")
    assert (exchange.type, exchange.durable, exchange.auto_delete) == (
        ExchangeType.TOPIC,
        True,
        False,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        exchange.name = "other"  # type: ignore[misc]  # frozen: the point of the test
    with pytest.raises(dataclasses.FrozenInstanceError):
        Queue("q").arguments = ()  # type: ignore[misc]  # frozen: the point of the test


# --- name checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["orders", "a", "ns.module.billing", "x:y", "A-b_c.9", "q" * 255])
def test_check_name_accepts_amqp_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", " ", "has space", "a/b", "é", "q" * 256, "tab\there", "a*", "a#", "orders\n"],
    ids=repr,
)
def test_check_name_refuses_everything_else(name: str) -> None:
    with pytest.raises(ValueError, match="invalid queue"):
        check_name(name, "queue")


def test_check_name_allows_empty_only_when_asked() -> None:
    assert check_name("", "exchange", allow_empty=True) == ""
    with pytest.raises(ValueError):
        check_name(" ", "exchange", allow_empty=True)


@pytest.mark.parametrize("key", ["", "a.b.c", "#", "*.created", "é" * 127, "k" * 255])
def test_check_routing_key_accepts_short_printable_keys(key: str) -> None:
    assert check_routing_key(key) == key


@pytest.mark.parametrize(
    "key", ["k" * 256, "é" * 128, "a\nb", "nul\x00", "tab\t", "\x1f"], ids=repr
)
def test_check_routing_key_refuses_long_or_control_keys(key: str) -> None:
    with pytest.raises(ValueError, match="invalid routing key"):
        check_routing_key(key)


# --- layout -----------------------------------------------------------------------------------


def test_layout_names_live_under_the_namespace() -> None:
    events, tenants, chat = (
        EventsLayout("acme-prod"),
        TenantsLayout("acme-prod"),
        ChatLayout("acme-prod"),
    )
    assert events.modules_exchange == "acme-prod.modules"
    assert events.module_queue("billing") == "acme-prod.module.billing"
    assert events.events_exchange == "acme-prod.events"
    assert events.event_sourcing_queue == "acme-prod.event-sourcing.p0"
    assert tenants.tenants_exchange == "acme-prod.tenants"
    assert tenants.tenant_queue("t1") == "acme-prod.tenant.t1.removals"
    assert tenants.tenant_routing_key("t1") == "t1.session-removal"
    assert chat.dispatch_exchange == "acme-prod.chat.dispatch"
    assert chat.persistence_exchange == "acme-prod.chat.persistence"
    assert chat.history_queue == "acme-prod.chat.history"
    assert chat.room_key("t1", "lobby") == "t1.lobby"


def test_same_room_of_two_tenants_gets_two_keys() -> None:
    chat = ChatLayout("ns")
    assert chat.room_key("t1", "lobby") != chat.room_key("t2", "lobby")


BAD_NAMES = ["", "a.b", "#", "*", "has space", "-lead", "_lead", "a/b", "é", "x" * 64, "t1\n"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_layout_refuses_invalid_tenant_and_module_names(bad: str) -> None:
    events, tenants, chat = EventsLayout("ns"), TenantsLayout("ns"), ChatLayout("ns")
    calls: list[tuple[Callable[..., str], tuple[str, ...]]] = [
        (events.module_queue, (bad,)),
        (tenants.tenant_queue, (bad,)),
        (tenants.tenant_routing_key, (bad,)),
        (chat.room_key, (bad, "lobby")),
    ]
    for method, args in calls:
        with pytest.raises(ValueError, match="invalid"):
            method(*args)


# Room ids are [A-Za-z0-9_-]{1,64}: a leading "-" or "_" and 64 characters are fine there.
BAD_ROOMS = ["", "a.b", "#", "*", "has space", "a/b", "é", "x" * 65, "t1\n"]


@pytest.mark.parametrize("bad", BAD_ROOMS, ids=repr)
def test_layout_refuses_invalid_room_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        ChatLayout("ns").room_key("t1", bad)


@pytest.mark.parametrize("room", ["-lead", "_lead", "x" * 64, "Room_1-a"])
def test_layout_accepts_every_valid_room_id(room: str) -> None:
    assert ChatLayout("ns").room_key("t1", room) == f"t1.{room}"


def test_layout_accepts_the_longest_valid_name() -> None:
    name = "x" * 63
    assert TenantsLayout("ns").tenant_routing_key(name) == f"{name}.session-removal"


@pytest.mark.parametrize("layout", [EventsLayout, TenantsLayout, ChatLayout])
@pytest.mark.parametrize("bad", ["a.b", "has space"], ids=repr)
def test_layout_refuses_an_invalid_namespace(layout: Callable[[str], object], bad: str) -> None:
    # Settings validates its namespace, but the layouts are public and build every name from it.
    with pytest.raises(ValueError, match="namespace"):
        layout(bad)


# --- the system topology ----------------------------------------------------------------------


def test_system_topology_declares_every_rabbitry_object() -> None:
    settings = Settings(
        namespace="ns1",
        max_attempts=3,
        retry_base_delay=2,
        retry_max_delay=60,
        modules=[ModuleConfig(name="billing", routing_keys=["invoice.*", "refund.#"])],
    )
    topology = system_topology(settings, tenants=["t1", "t2"])

    assert {(e.name, e.type) for e in topology.exchanges} == {
        ("ns1.modules", ExchangeType.TOPIC),
        ("ns1.events", ExchangeType.TOPIC),
        ("ns1.tenants", ExchangeType.DIRECT),
        ("ns1.tenants.created", ExchangeType.FANOUT),
        ("ns1.chat.dispatch", ExchangeType.DIRECT),
        ("ns1.chat.persistence", ExchangeType.FANOUT),
        ("ns1.sessions.revoked", ExchangeType.FANOUT),
    }
    work = {
        "ns1.module.workflow",
        "ns1.module.billing",
        "ns1.event-sourcing.p0",
        "ns1.tenant.t1.removals",
        "ns1.tenant.t2.removals",
        "ns1.chat.history",
    }
    expected = set()
    for name in work:
        expected |= {name, f"{name}.dlq", f"{name}.retry.2000", f"{name}.retry.4000"}
    assert set(queues_by_name(topology)) == expected
    assert topology.bindings == {
        Binding("ns1.modules", "ns1.module.workflow", "#"),
        Binding("ns1.modules", "ns1.module.billing", "invoice.*"),
        Binding("ns1.modules", "ns1.module.billing", "refund.#"),
        Binding("ns1.events", "ns1.event-sourcing.p0", "#"),
        Binding("ns1.tenants", "ns1.tenant.t1.removals", "t1.session-removal"),
        Binding("ns1.tenants", "ns1.tenant.t2.removals", "t2.session-removal"),
        Binding("ns1.chat.persistence", "ns1.chat.history", ""),
    }


def test_workflow_module_always_hears_everything() -> None:
    settings = Settings(
        namespace="ns2", modules=[ModuleConfig(name="workflow", routing_keys=["only.this"])]
    )
    bindings = {b for b in system_topology(settings).bindings if b.exchange == "ns2.modules"}
    assert bindings == {Binding("ns2.modules", "ns2.module.workflow", "#")}


def test_system_topology_follows_the_queue_type() -> None:
    settings = Settings(namespace="ns3", queue_type=QueueType.QUORUM)
    queues = system_topology(settings).queues
    assert queues
    assert all(q.argument_map().get("x-queue-type") == "quorum" for q in queues)


def test_system_topology_refuses_an_invalid_tenant() -> None:
    with pytest.raises(ValueError, match="tenant"):
        system_topology(Settings(namespace="ns4"), tenants=["bad tenant"])


def test_system_topology_is_deterministic() -> None:
    settings = Settings(namespace="ns5")
    assert system_topology(settings, ["t1"]) == system_topology(settings, ["t1"])


def test_event_partitions_each_have_one_active_consumer_and_share_the_buckets() -> None:
    from rabbitry.events.topology import (
        BUCKETS,
        bucket,
        events_topology,
        partition_keys,
        routing_key,
    )

    settings = Settings(namespace="ns1", events_partitions=3)
    topology = events_topology(settings)
    queues = queues_by_name(topology)
    for p in range(3):
        assert queues[f"ns1.event-sourcing.p{p}"].argument_map()["x-single-active-consumer"] is True
    bound = [b.routing_key for b in topology.bindings if b.exchange == "ns1.events"]
    # Every bucket goes to exactly one partition; keys without one to the first.
    assert sorted(bound) == sorted(["*", *(f"*.b{b}" for b in range(BUCKETS))])
    assert "*" in partition_keys(0, 3) and "*" not in partition_keys(1, 3)
    assert partition_keys(0, 1) == ["#"]
    # The bucket is CRC-32 of "<entity>#<id>" (what a PHP publisher computes with crc32()).
    entity = "App\\Models\\Order"
    assert bucket(entity, 7) == 1385377901 % BUCKETS  # crc32(b"App\\Models\\Order#7")
    assert routing_key("update", entity, 7, partitioned=False) == "update"
    assert routing_key("update", entity, 7, partitioned=True) == f"update.b{1385377901 % 64}"


def test_stale_keys_are_every_key_of_other_partition_counts_but_this_ones() -> None:
    assert stale_keys(0, 1) == [k for k in ALL_KEYS if k != "#"]
    two = stale_keys(1, 2)
    assert "#" in two and "*" in two and "*.b0" in two and "*.b1" not in two
    # What another count bound a queue with is stale unless this count binds it too.
    for partitions in (1, 2, 4, 64):
        for partition in range(partitions):
            stale = set(stale_keys(partition, partitions))
            assert stale.isdisjoint(partition_keys(partition, partitions))
            assert stale | set(partition_keys(partition, partitions)) == set(ALL_KEYS)
