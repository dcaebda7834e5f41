"""Sessions at scale (issue 20). One section per measured claim, chosen on the command line.

``revocations``: revoking one user with 1,000 sessions, DISPATCH → SESSION, per store (SQLite
file, PostgreSQL, MongoDB over the wire on an in-process SecantusDB), Redis as the cache, the
real broker (SESSION announces each revocation). SESSION is served by uvicorn on a local port,
so the HTTP hop is real; DISPATCH's removal handler is called directly (the broker's one
delivery of the request is left out: it is the same in every case). Cases, in one run:

  direct             SessionManager.revoke of the 1,000 in one call, no HTTP: the floor
  seed, naive        one DELETE per session, serially, a new connection each; SESSION as the
                     seed had it (each DELETE revoked alone: a store read, two Redis pipelines
                     of two commands a session, a store delete)
  seed, per session  the seed's DISPATCH: 16 DELETEs at a time on pooled connections; the
                     seed's SESSION
  per session        DISPATCH's client now (16 in flight per process, pooled), told not to use
                     the batch call; SESSION now (concurrent DELETEs of a tenant share one store
                     transaction, Redis evicts a user in two commands)
  seed, batch        POST /sessions/revocations, 500 ids a call, against the seed's SESSION
  batch, found       the client now, finding the batch call by itself (what DISPATCH does)

Each case: the time until the handler returns (it reads the store again and returns only once
none of the user's sessions is left), revocations per second, and the ratio to the seed's case
of the same path. Every case checks that the store and Redis hold none of the sessions after.

Usage: python bench/sessions.py revocations [--sessions 1000] [--rounds 3]
[--stores sqlite,postgresql,mongodb] [--pg DSN] [--redis URL]. A PostgreSQL database is created
for the run and dropped afterwards; the run's Redis keys and broker objects are deleted.

``scale``: DISPATCH at scale (bench/sessions_scale.py): 2,000 tenants, 2 replicas.
Usage: python bench/sessions.py scale [--tenants 2000] [--old-src DIR --old-tenants 200].
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from redis.asyncio import Redis

from common import AMQP_URL, POSTGRES_ADMIN, create_database
from rabbitry.app.http import create_app
from rabbitry.app.registry import lifespans, servers, system_topology
from rabbitry.config import Settings
from rabbitry.messaging import Declarer
from rabbitry.sessions.cache import RedisSessionCache
from rabbitry.sessions.client import SessionClient
from rabbitry.sessions.dispatch import RemovalHandler
from rabbitry.sessions.manager import SessionManager
from rabbitry.sessions.removal import RemovalRequest
from rabbitry.sessions.store import SessionRecord
from rabbitry.sessions.tokens import new_session_id, new_token, token_hash
from rabbitry.storage.clock import utcnow
from rabbitry.web import AppState

ADMIN = "bench-admin-token-for-this-run"
SERVICE = "bench-service-token-for-this-run"
TENANT = "bench"


# --- revocations -----------------------------------------------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # Ctrl-C stops the bench, not only the server


@asynccontextmanager
async def session_server(settings: Settings) -> AsyncIterator[tuple[SessionManager, str]]:
    """SESSION (``rabbitry serve session``) on a free local port: its manager and URL."""
    app = create_app(settings, routers=servers()["session"], lifespans=lifespans("session"))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task  # raises why it did not start
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield AppState.of(app).get(SessionManager), f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def seed_session(manager: SessionManager) -> Iterator[None]:
    """SESSION as the seed had it, for the baselines (the seed's code, patched on this
    instance): each DELETE revoked alone; a revocation reads the sessions, evicts them, deletes
    them in a second transaction, evicts again; Redis evicts with two commands a session."""
    store, cache = manager.store, manager.cache

    async def revoke(tenant: str, session_ids: Sequence[str]) -> list[SessionRecord]:
        await cache.evict(await store.get_many(tenant, session_ids))
        removed = await store.remove(tenant, session_ids)
        await cache.evict(removed)
        if removed and manager._listener is not None:
            await manager._listener.revoked(removed)
        return removed

    async def alone(tenant: str, session_id: str) -> bool:
        return bool(await revoke(tenant, [session_id]))

    async def evict_each(records: Sequence[SessionRecord]) -> None:
        assert isinstance(cache, RedisSessionCache)
        if records:
            async with cache._redis.pipeline(transaction=True) as pipe:
                for r in records:
                    pipe.delete(cache.entry_key(r.tenant, r.token_hash))
                    pipe.zrem(cache.index_key(r.tenant, r.user_id), r.token_hash)
                await pipe.execute()

    patches: list[tuple[object, str, object]] = [
        (manager, "revoke", revoke),
        (manager, "revoke_one", alone),
    ]
    if isinstance(cache, RedisSessionCache):
        patches.append((cache, "evict", evict_each))
    for target, name, value in patches:
        setattr(target, name, value)
    try:
        yield
    finally:
        for target, name, _ in patches:
            delattr(target, name)  # the class's method shows through again


def naive_transport() -> httpx.AsyncBaseTransport:
    """A new TCP connection for every request: nothing is kept alive."""
    return httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))


async def seed_sessions(manager: SessionManager, user_id: int, n: int) -> list[SessionRecord]:
    """``n`` sessions of ``user_id``, as logins leave them: in the store and in the cache."""
    now = utcnow().replace(microsecond=0)
    records = [
        SessionRecord(
            new_session_id(),
            TENANT,
            user_id,
            "bench",
            token_hash(new_token(TENANT)),
            now,
            now + dt.timedelta(hours=1),
        )
        for _ in range(n)
    ]
    for record in records:
        await manager.store.add(record)
        await manager.cache.put(record)
    return records


async def assert_gone(manager: SessionManager, user_id: int) -> None:
    assert not await manager.store.of_user(TENANT, user_id), "sessions left in the store"
    assert not await manager.cache.cached_for(TENANT, user_id), "sessions left in the cache"


Case = Callable[[SessionManager, str, int], Awaitable[None]]


def through_dispatch(*, seed: bool, **client_options: Any) -> Case:
    """A case: DISPATCH's removal handler with a client made of ``client_options``, against
    SESSION as it is now or (``seed``) as the seed had it."""

    async def run(manager: SessionManager, url: str, user_id: int) -> None:
        client = SessionClient(url, SERVICE, timeout=60, **client_options)
        handler = RemovalHandler(TENANT, manager.store, client)
        try:
            with seed_session(manager) if seed else contextlib.nullcontext():
                await handler(RemovalRequest(TENANT, user_id).message())
        finally:
            await client.close()

    return run


async def direct(manager: SessionManager, _url: str, user_id: int) -> None:
    records = await manager.store.of_user(TENANT, user_id)
    await manager.revoke(TENANT, [r.id for r in records])


CASES: dict[str, Case] = {
    "direct": direct,
    "seed, naive": through_dispatch(
        seed=True, batch=False, concurrency=1, transport=naive_transport()
    ),
    "seed, per session": through_dispatch(seed=True, batch=False),
    "per session": through_dispatch(seed=False, batch=False),
    "seed, batch": through_dispatch(seed=True, batch=True),
    "batch, found": through_dispatch(seed=False),
}
BASELINE = {"per session": "seed, per session", "batch, found": "seed, batch"}


async def revocations_of_store(
    label: str, settings: Settings, n: int, rounds: int
) -> dict[str, float]:
    """Median seconds of each case on one store."""
    times: dict[str, list[float]] = {name: [] for name in CASES}
    user_id = 0
    async with session_server(settings) as (manager, url):
        await manager.store.prepare(TENANT)
        for _ in range(rounds):
            for name, case in CASES.items():  # interleaved: a load spike hits every case
                user_id += 1
                await seed_sessions(manager, user_id, n)
                start = time.perf_counter()
                await case(manager, url, user_id)
                times[name].append(time.perf_counter() - start)
                await assert_gone(manager, user_id)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{label}: one user's {n} sessions, median of {rounds}")
    for name, seconds in medians.items():
        base = BASELINE.get(name)
        ratio = f"   {medians[base] / seconds:5.1f}x {base}" if base else ""
        floor = "" if name == "direct" else f"   {seconds / medians['direct']:5.1f}x direct time"
        print(
            f"  {name:<18} {seconds * 1000:9.1f} ms {n / seconds:8.0f} revocations/s{floor}{ratio}"
        )
    return medians


async def revocations(args: argparse.Namespace) -> None:
    from secantus import SecantusDBServer  # type: ignore[import-untyped]

    print(f"{time.strftime('%Y-%m-%d %H:%M')}: revocations; load average {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        mongo = SecantusDBServer(port=0, storage_path=f"{tmp}/mongo")
        mongo.start()
        base: dict[str, Any] = {
            "amqp_url": args.amqp,
            "redis_url": args.redis,
            "admin_token": ADMIN,
            "service_token": SERVICE,
            "data_dir": tmp,
        }
        try:
            for store in args.stores.split(","):
                sql_url, drop = await create_database(
                    "postgresql" if store == "postgresql" else "sqlite",
                    _fresh_dir(tmp, store),
                    args.pg,
                )
                extra: dict[str, Any] = {"database_url": sql_url}
                if store == "mongodb":
                    extra["mongodb_url"] = str(mongo.uri)
                settings = Settings(namespace=f"bench{uuid.uuid4().hex[:8]}", **base, **extra)
                label = {"mongodb": "MongoDB wire (SecantusDB)"}.get(store, store)
                try:
                    await revocations_of_store(label, settings, args.sessions, args.rounds)
                finally:
                    await cleanup(settings, args.redis)
                    await drop()
        finally:
            mongo.stop()
    print(f"\nload average at the end {_load()}")


def _fresh_dir(tmp: str, store: str) -> Path:
    path = Path(tmp) / store
    path.mkdir()
    return path


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


async def cleanup(settings: Settings, redis_url: str) -> None:
    """Delete the run's Redis keys and broker objects."""
    redis = Redis.from_url(redis_url)
    keys = [k async for k in redis.scan_iter(match=f"{settings.namespace}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    async with await Declarer.connect(settings.amqp.url) as declarer:
        await declarer.delete(system_topology(settings, [TENANT]))


def revocation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default="sqlite,postgresql,mongodb")
    parser.add_argument("--pg", default=POSTGRES_ADMIN)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--amqp", default=AMQP_URL)
    parser.set_defaults(section=revocations)


def scale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenants", type=int, default=2000)
    parser.add_argument("--old-tenants", type=int, default=200)
    parser.add_argument("--old-src", default=None, help="the previous version's src directory")
    parser.set_defaults(section=scale_section)


async def scale_section(args: argparse.Namespace) -> None:
    from sessions_scale import scale  # DISPATCH at scale: its own module

    await scale(args.tenants, args.old_tenants, args.old_src)


# --- the command line ------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sections = parser.add_subparsers(required=True, metavar="SECTION")
    revocation_arguments(sections.add_parser("revocations", help="revocations per second"))
    scale_arguments(
        sections.add_parser("scale", help="DISPATCH at scale: 2,000 tenants, 2 replicas")
    )
    args = parser.parse_args()
    asyncio.run(args.section(args))


if __name__ == "__main__":
    main()
