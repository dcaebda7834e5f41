"""Revoking a user with 1,000 sessions: DELETE → DISPATCH → SESSION, against direct deletes.

Cases, in one run, for each store (SQLite file, PostgreSQL, MongoDB over the wire on an
in-process SecantusDB), Redis as the cache, the real broker:
  (a) direct: SessionManager.revoke of the 1,000 sessions in one call (store delete + cache
      evict in this process, no broker, no HTTP): the floor
  (b) per session: DELETE /api/tenants/{t}/users/{id}; DISPATCH asks SESSION to delete each
      session (DELETE /sessions/{sid}, 16 at a time), as the seed says
  (c) batch: the same, DISPATCH sends POST /sessions/revocations (500 ids per call)
For (b) and (c): the time from the DELETE to the moment the store holds none of the sessions
(polled every 2 ms), and revocations per second; ratios against (a).

SESSION, USER and DISPATCH run in this process on one uvicorn server (as `rabbitry up` does),
so the HTTP hop is real. Usage: python bench/sessions.py [--sessions 1000] [--rounds 3]
[--pg DSN] [--redis URL]. A PostgreSQL database is created for the run and dropped afterwards.

``--scale [--tenants 2000] [--old-src ../main/src --old-tenants 200]`` measures DISPATCH at
scale instead (bench/sessions_scale.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
import httpx
import uvicorn

from rabbitry.app.http import create_app
from rabbitry.app.registry import lifespans, servers
from rabbitry.config import Settings
from rabbitry.sessions.manager import SessionManager
from rabbitry.sessions.store import SessionRecord
from rabbitry.sessions.tokens import new_session_id, new_token, token_hash
from rabbitry.storage.clock import utcnow
from rabbitry.web import AppState

ADMIN = "bench-admin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def postgres(dsn: str) -> AsyncIterator[str]:
    name = f"rabbitry_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield dsn.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def system(settings: Settings, port: int) -> AsyncIterator[SessionManager]:
    routers = [r for name in ("user", "session") for r in servers()[name]]
    app = create_app(settings, routers=routers, workers=["dispatch"], lifespans=lifespans("user"))
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while True:
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield AppState.of(app).get(SessionManager)
    finally:
        server.should_exit = True
        await task


async def seed(manager: SessionManager, tenant: str, user_id: int, n: int) -> list[str]:
    now = utcnow()
    records = [
        SessionRecord(
            new_session_id(),
            tenant,
            user_id,
            "bench",
            token_hash(new_token(tenant)),
            now,
            now + dt.timedelta(hours=1),
        )
        for _ in range(n)
    ]
    for record in records:  # as logins leave them: in the store and in the cache
        await manager.store.add(record)
        await manager.cache.put(record)
    return [r.id for r in records]


async def one_store(label: str, settings: Settings, n: int, rounds: int) -> dict[str, float]:
    port = free_port()
    settings = settings.model_copy(update={"session_url": f"http://127.0.0.1:{port}"})
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {ADMIN}"}
    times: dict[str, list[float]] = {"direct": [], "per-session": [], "batch": []}
    for mode in ("per-session", "batch"):
        mode_settings = settings.model_copy(update={"dispatch_batch": mode == "batch"})
        async with system(mode_settings, port) as manager, httpx.AsyncClient(base_url=base) as http:
            tenant = f"bench-{mode}"
            await http.post("/api/tenants", json={"name": tenant}, headers=admin)
            await asyncio.sleep(1.0)  # DISPATCH picks the tenant up
            for _ in range(rounds):
                body = {"username": f"u{uuid.uuid4().hex[:8]}", "password": "pw"}
                made = await http.post(f"/api/tenants/{tenant}/users", json=body, headers=admin)
                user_id = made.json()["id"]
                ids = await seed(manager, tenant, user_id, n)
                if mode == "per-session":  # the floor, measured in the same process and run
                    start = time.perf_counter()
                    await manager.revoke(tenant, ids)
                    times["direct"].append(time.perf_counter() - start)
                    ids = await seed(manager, tenant, user_id, n)
                start = time.perf_counter()
                answer = await http.delete(f"/api/tenants/{tenant}/users/{user_id}", headers=admin)
                assert answer.status_code == 202, answer.text
                while True:
                    if not await manager.store.of_user(tenant, user_id):
                        break
                    await asyncio.sleep(0.002)
                times[mode].append(time.perf_counter() - start)
    medians = {k: statistics.median(v) for k, v in times.items()}
    direct = medians["direct"]
    print(f"\n{label}: {n} sessions, median of {rounds}")
    for mode, seconds in medians.items():
        ratio = "" if mode == "direct" else f"   {seconds / direct:5.1f}x the direct time"
        print(f"  {mode:<12} {seconds * 1000:8.1f} ms  {n / seconds:9.0f} revocations/s{ratio}")
    return medians


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    # DISPATCH at scale (bench/sessions_scale.py): its own section of the run.
    parser.add_argument("--scale", action="store_true", help="measure DISPATCH at scale only")
    parser.add_argument("--tenants", type=int, default=2000)
    parser.add_argument("--old-tenants", type=int, default=200)
    parser.add_argument("--old-src", default=None, help="the previous version's src directory")
    args = parser.parse_args()
    if args.scale:
        from sessions_scale import scale

        await scale(args.tenants, args.old_tenants, args.old_src)
        return
    from secantus import SecantusDBServer  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory() as tmp:
        mongo = SecantusDBServer(port=0, storage_path=f"{tmp}/mongo")
        mongo.start()
        base = {
            "amqp_url": "amqp://guest:guest@127.0.0.1:5672/",
            "redis_url": args.redis,
            "admin_token": ADMIN,
            "service_token": "bench-service",
            "password_time_cost": 1,
            "password_memory_kib": 1024,
            "data_dir": tmp,
        }
        try:
            async with postgres(args.pg) as pg_url:
                for label, extra in [
                    ("SQLite", {"database_url": f"sqlite:///{tmp}/bench.db"}),
                    ("PostgreSQL", {"database_url": pg_url}),
                    (
                        "MongoDB (SecantusDB)",
                        {"database_url": f"sqlite:///{tmp}/m.db", "mongodb_url": mongo.uri},
                    ),
                ]:
                    settings = Settings(namespace=f"bench{uuid.uuid4().hex[:8]}", **base, **extra)
                    try:
                        await one_store(label, settings, args.sessions, args.rounds)
                    finally:
                        await cleanup(settings, args.redis)
        finally:
            mongo.stop()


async def cleanup(settings: Settings, redis_url: str) -> None:
    """Delete the run's broker objects and Redis keys."""
    from redis.asyncio import Redis

    from rabbitry.app.registry import system_topology
    from rabbitry.messaging import Declarer

    redis = Redis.from_url(redis_url)
    keys = [k async for k in redis.scan_iter(match=f"{settings.namespace}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()
    topology = system_topology(settings, ["bench-per-session", "bench-batch"])
    async with await Declarer.connect(settings.amqp.url) as declarer:
        await declarer.delete(topology)


if __name__ == "__main__":
    asyncio.run(main())
