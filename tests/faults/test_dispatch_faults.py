"""DISPATCH on a three-node cluster: the node its connection is on is killed (``kill -9``) while
100 users of 20 tenants are being removed. Every removal completes: each removed user's
sessions are gone from the store and from Redis; every bystander's session (a user of the same
tenants who was not removed) is untouched, in the store, in Redis, and still authenticates.

USER and SESSION serve HTTP in this process (uvicorn, with the outbox relay beside them, for a
request whose publish the kill refused); DISPATCH runs as its own service, one replica.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from pydantic import SecretStr
from redis.asyncio import Redis

from faults.conftest import BASE_PORT, CLUSTER_URL, Cluster, Figures
from fixtures.sessions import (
    REDIS_URL,
    admin,
    bearer,
    delete_redis_keys,
    sessions_settings_for,
    user_with_sessions,
)
from helpers import eventually_true, free_port, serving_on
from rabbitry.app.http import create_app
from rabbitry.app.registry import lifespans, servers
from rabbitry.config import Settings
from rabbitry.messaging.settings import QueueType
from rabbitry.sessions.backends import open_store
from rabbitry.sessions.dispatch import DispatchService
from rabbitry.sessions.tokens import token_hash
from rabbitry.storage import Database

TENANTS = 20
REMOVED = 5  # users per tenant removed: 100 in all
BYSTANDERS = 2  # users per tenant kept
SESSIONS = 2  # per user
_NAME = re.compile(r'\{"connection_name","([^"]*)"\}')
_PORT = re.compile(r"-> [^\t]*:(\d+)$")


@asynccontextmanager
async def user_and_session(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings,
        routers=[r for name in ("user", "session") for r in servers()[name]],
        workers=("relay",),
        lifespans=lifespans("user"),
    )
    port = int(str(settings.session_url).rsplit(":", 1)[1])
    async with (
        serving_on(app, port, start=60, stop=90),
        httpx.AsyncClient(base_url=str(settings.session_url), timeout=60) as client,
    ):
        yield client


async def consumer_node(cluster: Cluster, name: str) -> int:
    """The node DISPATCH's consumer connection (named exactly ``name``) is on."""
    out = await cluster.ctl(
        cluster.live_node(), "list_connections", "--no-table-headers", "name", "client_properties"
    )
    for line in out.splitlines():
        peer, properties = [*line.split("\t"), ""][:2]
        named, port = _NAME.search(properties), _PORT.search(peer)
        if named and named.group(1) == name and port:
            return int(port.group(1)) - BASE_PORT
    raise AssertionError(f"no connection named {name}")


async def test_killing_dispatchs_node_during_100_removals_loses_none_and_touches_no_bystander(
    faults: Cluster, namespace: str, tmp_path: Path, figures: Figures
) -> None:
    settings = sessions_settings_for(
        namespace,
        f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}",
        None,
        amqp_url=SecretStr(CLUSTER_URL),
        queue_type=QueueType.QUORUM,
        session_url=f"http://127.0.0.1:{free_port()}",
        tenant_reconcile_interval=5.0,
    )
    redis = Redis.from_url(REDIS_URL)
    try:
        await run_case(faults, settings, redis, figures)
    finally:
        await redis.aclose()
        await delete_redis_keys(namespace)


async def run_case(cluster: Cluster, settings: Settings, redis: Redis, figures: Figures) -> None:
    tenants = [f"f{n}" for n in range(TENANTS)]
    removed: dict[tuple[str, int], list[str]] = {}
    kept: dict[tuple[str, int], list[str]] = {}
    async with user_and_session(settings) as client:
        for tenant in tenants:
            made = await client.post("/api/tenants", json={"name": tenant}, headers=admin())
            assert made.status_code == 201, made.text
            for n in range(REMOVED + BYSTANDERS):
                user, tokens = await user_with_sessions(client, tenant, f"u{n}", SESSIONS)
                (removed if n < REMOVED else kept)[(tenant, user)] = tokens
        for tokens in kept.values():  # cached in Redis by their first use
            for token in tokens:
                assert (await client.get(me(token), headers=bearer(token))).status_code == 200

        async with Database(settings.sql_url) as db:
            store = open_store(settings, db)
            service = DispatchService(settings, db=db, replica="f1")
            stopping = asyncio.Event()
            dispatch = asyncio.create_task(service.run(stopping))
            try:
                await asyncio.wait_for(service.worker.connected.wait(), 120)
                node = await consumer_node(cluster, service.worker.name)
                started = time.monotonic()
                accepted = 0
                for index, (tenant, user) in enumerate(removed):
                    if index == len(removed) // 3:
                        await cluster.kill(node)  # removals in flight, more to come
                    answer = await client.delete(
                        f"/api/tenants/{tenant}/users/{user}", headers=admin()
                    )
                    assert answer.status_code == 202, answer.text
                    accepted += 1

                async def all_gone() -> bool:
                    for (tenant, user), tokens in removed.items():
                        if await store.of_user(tenant, user) or await cached(
                            redis, settings, tenant, user, tokens
                        ) != (0, 0):
                            return False
                    return True

                await eventually_true(all_gone, timeout=240, what="every removal complete")
                figures.latency(
                    "dispatch: 100 removals, node killed, all complete", time.monotonic() - started
                )
            finally:
                stopping.set()
                await asyncio.wait_for(dispatch, 90)

            untouched = 0
            for (tenant, user), tokens in kept.items():
                assert len(await store.of_user(tenant, user)) == SESSIONS
                entries, _ = await cached(redis, settings, tenant, user, tokens)
                assert entries == len(tokens)
                for token in tokens:
                    assert (await client.get(me(token), headers=bearer(token))).status_code == 200
                untouched += len(tokens)
            await store.close()

    figures.count("dispatch fault: users removed", accepted)
    figures.count("dispatch fault: their sessions gone from store and Redis", SESSIONS * accepted)
    figures.count("dispatch fault: bystander sessions untouched", untouched)
    figures.count("dispatch fault: lost", 0)


def me(token: str) -> str:
    return f"/api/tenants/{token.split('.')[0]}/sessions/me"  # a token starts with its tenant


async def cached(
    redis: Redis, settings: Settings, tenant: str, user: int, tokens: list[str]
) -> tuple[int, int]:
    """What Redis holds of the user's sessions: (entries of ``tokens``, per-user index keys)."""
    ns = settings.namespace
    keys = [f"{ns}:session:{tenant}:{token_hash(t)}" for t in tokens]
    entries = int(await redis.exists(*keys))
    index = int(await redis.exists(f"{ns}:user-sessions:{tenant}:{user}"))
    return entries, index
