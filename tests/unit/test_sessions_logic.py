"""The sessions part's pure logic, no network: tokens, the removal request's format, the login
throttle kept in memory, and the tenant layout on the broker."""

from __future__ import annotations

import pytest

from rabbitry.config import Settings
from rabbitry.errors import MessageError
from rabbitry.messaging.envelope import Message
from rabbitry.sessions import TenantsLayout
from rabbitry.sessions.removal import REMOVAL, RemovalRequest
from rabbitry.sessions.throttle import MemoryLoginThrottle
from rabbitry.sessions.tokens import new_session_id, new_token, token_hash, token_tenant
from rabbitry.sessions.topology import tenant_topology


def test_a_token_names_its_tenant_and_is_stored_only_as_its_hash() -> None:
    token = new_token("acme-1")
    assert token_tenant(token) == "acme-1"
    assert token != new_token("acme-1")  # random
    digest = token_hash(token)
    assert len(digest) == 64 and token not in digest
    assert token_hash(token) == digest  # stable: the stores look sessions up by it
    assert len(new_session_id()) == 32 and new_session_id() != new_session_id()


@pytest.mark.parametrize(
    "token",
    ["", "acme", "acme.", "Acme." + "a" * 43, "acme." + "a" * 42, "acme." + "a" * 44, "a.b.c"],
)
def test_a_malformed_token_belongs_to_no_tenant(token: str) -> None:
    assert token_tenant(token) is None


def test_a_removal_request_round_trips_through_its_message() -> None:
    request = RemovalRequest("acme", 7)
    message = request.message()
    assert (message.type, message.tenant, message.payload) == (
        REMOVAL,
        "acme",
        {"tenant": "acme", "user_id": 7},
    )
    assert RemovalRequest.parse(message) == request


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ([1, 2], "JSON object"),
        ({"tenant": "acme"}, "'user_id' \\(integer\\)"),
        ({"tenant": "acme", "user_id": "7"}, "'user_id' \\(integer\\)"),
        ({"tenant": "acme", "user_id": True}, "'user_id' \\(integer\\)"),
        ({"tenant": 5, "user_id": 7}, "'tenant' \\(string\\)"),
        ({"tenant": "Bad Tenant", "user_id": 7}, "tenant"),
    ],
)
def test_a_malformed_removal_request_is_a_message_error(payload: object, why: str) -> None:
    with pytest.raises(MessageError, match=why):
        RemovalRequest.parse(Message(type=REMOVAL, payload=payload))


async def test_the_memory_throttle_refuses_attempts_past_the_limit_and_a_success_clears_it() -> (
    None
):
    throttle = MemoryLoginThrottle(max_failures=3, lockout=3600)
    for _ in range(3):
        assert await throttle.attempt("acme", "ann", "10.0.0.1")
    assert not await throttle.attempt("acme", "ann", "10.0.0.1")
    assert await throttle.attempt("globex", "ann", "10.0.0.1")  # per tenant
    assert await throttle.attempt("acme", "bob", "10.0.0.1")  # per user
    await throttle.succeeded("acme", "ann", "10.0.0.1")
    assert await throttle.attempt("acme", "ann", "10.0.0.1")


async def test_the_memory_throttle_forgets_attempts_once_the_window_has_passed() -> None:
    throttle = MemoryLoginThrottle(max_failures=1, lockout=0)  # every window already over
    assert await throttle.attempt("acme", "ann", "10.0.0.1")
    assert await throttle.attempt("acme", "ann", "10.0.0.1")


def test_each_tenant_has_its_own_durable_queue_on_the_tenants_exchange() -> None:
    layout = TenantsLayout("ns")
    assert layout.tenant_queue("acme") == "ns.tenant.acme.removals"
    assert layout.tenant_routing_key("acme") == "acme.session-removal"
    topology = tenant_topology(Settings(namespace="ns"), ["acme", "globex"])
    bound = {(b.exchange, b.queue, b.routing_key) for b in topology.bindings}
    assert bound >= {
        ("ns.tenants", "ns.tenant.acme.removals", "acme.session-removal"),
        ("ns.tenants", "ns.tenant.globex.removals", "globex.session-removal"),
    }
    queues = {q.name: q for q in topology.queues}
    assert queues["ns.tenant.acme.removals"].durable
    assert "ns.tenant.acme.removals.dlq" in queues
