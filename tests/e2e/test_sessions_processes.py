"""USER, SESSION and DISPATCH as separate processes (``rabbitry serve user``, ``serve session``,
``worker dispatch``, plus ``worker relay`` for the outbox) on real RabbitMQ, PostgreSQL and
Redis, once with the SQL store and once with the MongoDB store (over the wire, SecantusDB).

3 tenants, 100 users each, 5 sessions each. A removed user's tokens answer 401, everyone else's
keep working, and Redis holds no key of theirs; again with SESSION stopped while DISPATCH tries
the removal, with DISPATCH's connections dropped by the broker, and with the broker unreachable
from USER at the DELETE (the request waits in the outbox). Each waits for the outcome with a
generous bound; how fast a revocation is, is measured by bench/sessions.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from conftest import BrokerProbe, Endpoint
from fixtures.sessions import ADMIN, REDIS_URL, SERVICE, delete_redis_keys, redis_keys
from helpers import AMQP_URL, RABBITRY, eventually_true, free_port, listed, scratch_database
from rabbitry.sessions.tokens import token_hash
from rabbitry.sessions.topology import TenantsLayout

TENANTS = 3
USERS = 100
SESSIONS = 5


@dataclass
class Processes:
    env: dict[str, str]
    logs: Path
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self, name: str, *args: str, amqp_url: str | None = None) -> None:
        env = {**self.env, **({"RABBITRY_AMQP_URL": amqp_url} if amqp_url else {})}
        with (self.logs / f"{name}.log").open("ab") as log:
            self.running[name] = subprocess.Popen(
                [RABBITRY, *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def serve(self, name: str, *, amqp_url: str | None = None) -> None:
        port = self.ports.setdefault(name, free_port())
        self.start(name, "serve", name, "--port", str(port), amqp_url=amqp_url)

    def stop(self, name: str) -> None:
        proc = self.running.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}"
            for p in self.logs.glob("*.log")
        )


async def healthy(url: str, what: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{what} never answered /healthz")


@pytest.fixture(params=["sql", "mongodb"])
async def system(
    request: pytest.FixtureRequest,
    namespace: str,
    tmp_path: Path,
    endpoint: Endpoint,
    broker: BrokerProbe,
) -> AsyncIterator[tuple[Processes, Endpoint]]:
    async with scratch_database("postgresql", tmp_path) as url:
        env = {
            **os.environ,
            "RABBITRY_NAMESPACE": namespace,
            "RABBITRY_AMQP_URL": AMQP_URL,
            "RABBITRY_DATABASE_URL": url.replace("postgresql+asyncpg://", "postgresql://"),
            "RABBITRY_REDIS_URL": REDIS_URL,
            "RABBITRY_DATA_DIR": str(tmp_path / "var"),
            "RABBITRY_ADMIN_TOKEN": ADMIN,
            "RABBITRY_SERVICE_TOKEN": SERVICE,
            "RABBITRY_PASSWORD_TIME_COST": "1",
            "RABBITRY_PASSWORD_MEMORY_KIB": "1024",
            # SESSION may stay down as long as a loaded machine takes to restart it: the
            # retry budget (about 2 minutes at 4 s apart) must outlast that.
            "RABBITRY_MAX_ATTEMPTS": "32",
            "RABBITRY_RETRY_BASE_DELAY": "0.5",
            "RABBITRY_RETRY_MAX_DELAY": "4",
            "RABBITRY_CIRCUIT_OPEN_SECONDS": "0.5",
            "RABBITRY_CONNECT_TIMEOUT": "2",
            "RABBITRY_LOGIN_MAX_FAILURES": "1000",
        }
        if request.param == "mongodb":
            env["RABBITRY_MONGODB_URL"] = request.getfixturevalue("mongo_wire_url")
        env.pop("RABBITRY_SESSION_URL", None)
        procs = Processes(env, tmp_path)
        procs.ports["session"] = free_port()
        env["RABBITRY_SESSION_URL"] = f"http://127.0.0.1:{procs.ports['session']}"
        await endpoint.open("forward")
        try:
            procs.serve("user", amqp_url=endpoint.url)  # first: it migrates the database
            await healthy(procs.url("user"), "USER")
            procs.serve("session")
            procs.start("dispatch", "worker", "dispatch")
            procs.start("relay", "worker", "relay", amqp_url=endpoint.url)
            await healthy(procs.url("session"), "SESSION")
            yield procs, endpoint
        finally:
            for name in list(procs.running):
                procs.stop(name)
            print(procs.tail())
            await delete_redis_keys(namespace)


async def populate(procs: Processes) -> dict[tuple[str, int], list[str]]:
    """Tenants created while DISPATCH runs, their users, and 5 tokens per user."""
    tokens: dict[tuple[str, int], list[str]] = {}
    limit = asyncio.Semaphore(16)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(timeout=30) as client:
        for t in range(TENANTS):
            tenant = f"tenant-{t}"
            made = await client.post(
                f"{procs.url('user')}/api/tenants", json={"name": tenant}, headers=admin
            )
            assert made.status_code == 201, made.text

        async def user(tenant: str, i: int) -> None:
            async with limit:
                body = {"username": f"u{i}", "password": f"secret-{i}"}
                made = await client.post(
                    f"{procs.url('user')}/api/tenants/{tenant}/users", json=body, headers=admin
                )
                assert made.status_code == 201, made.text
                user_id = made.json()["id"]
                tokens[(tenant, user_id)] = []
                for _ in range(SESSIONS):
                    login = await client.post(
                        f"{procs.url('session')}/api/tenants/{tenant}/sessions", json=body
                    )
                    assert login.status_code == 201, login.text
                    tokens[(tenant, user_id)].append(login.json()["token"])

        await asyncio.gather(
            *(user(f"tenant-{t}", i) for t in range(TENANTS) for i in range(USERS))
        )
    return tokens


async def statuses(procs: Processes, items: list[tuple[str, str]]) -> list[int]:
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(tenant: str, token: str) -> int:
            async with limit:
                answer = await client.get(
                    f"{procs.url('session')}/api/tenants/{tenant}/sessions/me",
                    headers={"Authorization": f"Bearer {token}"},
                )
                return answer.status_code

        return await asyncio.gather(*(one(t, tok) for t, tok in items))


async def remove(procs: Processes, tenant: str, user_id: int) -> dict[str, object]:
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.delete(
            f"{procs.url('user')}/api/tenants/{tenant}/users/{user_id}",
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def revoked(procs: Processes, tenant: str, tokens: list[str], timeout: float = 90) -> None:
    """Wait until every token answers 401 (the bound only catches a revocation that is lost)."""

    async def all_401() -> bool:
        return set(await statuses(procs, [(tenant, t) for t in tokens])) == {401}

    await eventually_true(all_401, timeout=timeout, what="the removed user's tokens to be revoked")


async def left_in(broker: BrokerProbe, queue: str) -> dict[str, tuple[int, int]]:
    """(ready, unacked) of ``queue``, its retry tiers and its dead-letter queue, where not empty:
    a request DISPATCH failed on waits in a tier, where the work queue's own count misses it."""
    rows = await asyncio.to_thread(
        listed, "queues", "name", "messages_ready", "messages_unacknowledged"
    )
    return {
        name: (int(ready), int(unacked))
        for name, ready, unacked in rows
        if name.startswith(queue) and (ready, unacked) != ("0", "0")
    }


async def retrying(broker: BrokerProbe, queue: str) -> bool:
    """DISPATCH tried the request and it failed: it waits in one of the queue's retry tiers."""
    return any(q.startswith(f"{queue}.retry.") for q in await left_in(broker, queue))


async def no_redis_key_of(namespace: str, tenant: str, user_id: int, tokens: list[str]) -> None:
    keys = await redis_keys(namespace)
    assert f"{namespace}:user-sessions:{tenant}:{user_id}" not in keys
    for token in tokens:
        assert f"{namespace}:session:{tenant}:{token_hash(token)}" not in keys


@pytest.mark.timeout(900)  # 1,500 logins and four faults, on a shared 2-core machine
async def test_removing_users_revokes_their_sessions_across_processes_through_every_fault(
    system: tuple[Processes, Endpoint], namespace: str, broker: BrokerProbe
) -> None:
    procs, endpoint = system
    tokens = await populate(procs)
    assert len(tokens) == TENANTS * USERS
    by_tenant = sorted(tokens)
    victims = [by_tenant[0], by_tenant[USERS + 1], by_tenant[2 * USERS + 2], by_tenant[3]]
    assert all(
        set(s) == {200}
        for s in [await statuses(procs, [(victims[0][0], t) for t in tokens[victims[0]]])]
    )

    # 1. The plain case: all five tokens answer 401.
    tenant, user_id = victims[0]
    assert (await remove(procs, tenant, user_id))["request"] == "published"
    await revoked(procs, tenant, tokens[victims[0]])
    await no_redis_key_of(namespace, tenant, user_id, tokens[victims[0]])

    # 2. SESSION stopped while DISPATCH tries the removal: it completes once SESSION is back.
    tenant, user_id = victims[1]
    layout = TenantsLayout(namespace)
    procs.stop("session")
    await remove(procs, tenant, user_id)
    await eventually_true(
        lambda: retrying(broker, layout.tenant_queue(tenant)),
        timeout=60,
        what="DISPATCH to fail against the stopped SESSION and retry later",
    )
    procs.serve("session")
    await healthy(procs.url("session"), "SESSION again")
    await revoked(procs, tenant, tokens[victims[1]])
    await no_redis_key_of(namespace, tenant, user_id, tokens[victims[1]])
    assert await broker.counts(layout.tenant_queue(tenant) + ".dlq") == (0, 0)

    # 3. The broker unreachable from USER at the DELETE: the request waits in the outbox, but
    # the tokens stop working at once (the user is gone: a cache miss checks it, and the removal
    # evicted what it could reach); the sessions themselves go once the broker is back.
    tenant, user_id = victims[2]
    await endpoint.close()
    assert (await remove(procs, tenant, user_id))["request"] == "persisted"
    assert set(await statuses(procs, [(tenant, t) for t in tokens[victims[2]]])) == {401}
    await endpoint.open("forward")
    await revoked(procs, tenant, tokens[victims[2]])
    await no_redis_key_of(namespace, tenant, user_id, tokens[victims[2]])

    # 4. The broker drops DISPATCH's connections: it resubscribes to every tenant's queue (the
    # request waits there, durable, until it has).
    assert await broker.close_connections(f"{namespace}-dispatch-") >= 1  # one for all tenants
    tenant, user_id = victims[3]
    await remove(procs, tenant, user_id)
    await revoked(procs, tenant, tokens[victims[3]])

    # Everyone else's sessions still work.
    others = [(key[0], tok) for key, toks in tokens.items() if key not in victims for tok in toks]
    assert len(others) == (TENANTS * USERS - len(victims)) * SESSIONS
    assert set(await statuses(procs, others)) == {200}
    for t in range(TENANTS):
        # Nothing waiting, held, retrying or dead: the work queue and everything beside it.
        assert await left_in(broker, layout.tenant_queue(f"tenant-{t}")) == {}
