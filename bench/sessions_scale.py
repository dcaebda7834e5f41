"""DISPATCH at scale: 2,000 tenants, 2 replicas (``python bench/sessions.py scale``).

Each replica runs in a process of its own (``--replica``, below), so its connections and its
memory are its own; it prints a line each time it starts consuming every tenant's queue. For
each design the run measures:
  * connections per replica (the broker's count of connections named after it, steady state)
    and RSS per replica (``VmRSS``);
  * startup: from the process start to consuming every tenant (declaring them all first);
  * a new tenant: from its row in the tenants table (USER then declares its queue and, in the
    new design, announces it) until both replicas consume its queue, and of that the time USER
    took to declare and announce it;
  * resubscribe: the broker closes every connection of both replicas at once
    (``rabbitmqctl close_connection``, these connections only); the time until both consume
    every tenant again.
``BENCH_LOG=1`` sends each replica's log (INFO, stamped with the unix time and the replica's
name) to stderr, with a line whenever its event loop stalls more than ``STALL``, and stamps the
new tenant's creation: which replica heard the notice late, and whether it was busy then.
Today's design (one Worker, so one connection, per tenant; a 0.5 s poll of the tenants table)
runs from ``--old-src`` (a checkout of the previous version's ``src``), with fewer tenants
(``--old-tenants``, 200 by default): 2,000 of its connections per replica would exhaust the
shared broker's file descriptors. Retry tiers are cut to one (``max_attempts=2``) for both, so
2,000 tenants are 6,000 queues, not 12,000, on a broker others share.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from rabbitry.config import Settings
from rabbitry.messaging import Declarer

ADMIN = "bench-admin-token-000000000000000000"
STALL = 0.3  # with BENCH_LOG, a replica reports an event loop that slept this much too long
_NAME = re.compile(r'\{"connection_name","([^"]*)"\}')


def settings_for(namespace: str, db_path: str, **extra: object) -> Settings:
    return Settings(
        namespace=namespace,
        amqp_url="amqp://guest:guest@127.0.0.1:5672/",
        database_url=f"sqlite:///{db_path}",
        service_token="bench-service",
        admin_token=ADMIN,
        session_url="http://127.0.0.1:9",
        max_attempts=2,
        redis_url=None,
        **extra,  # type: ignore[arg-type]
    )


# --- the replica process ----------------------------------------------------------------------


async def replica(namespace: str, db_path: str, name: str) -> None:
    """Run one DISPATCH replica; print ``consuming <unix time>`` at each start of consuming."""
    from rabbitry.sessions.dispatch import DispatchService

    settings = settings_for(namespace, db_path)
    trace = bool(os.environ.get("BENCH_LOG"))
    if trace:  # each replica's log on stderr, stamped, to tell which replica was late and why
        import logging

        logging.basicConfig(level=logging.INFO, format=f"%(created).3f {name} %(name)s %(message)s")
    try:
        service = DispatchService(settings, replica=name)
    except TypeError:  # today's design takes no replica name
        service = DispatchService(settings)
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    was = False
    while not task.done():
        now = bool(service.consuming) and _serving(service) > 0
        if now and not was:
            print(f"consuming {time.time():.4f} {_serving(service)}", flush=True)
        was = now
        before = time.monotonic()
        await asyncio.sleep(0.02)
        if trace and time.monotonic() - before > STALL:
            lag = time.monotonic() - before
            print(f"{time.time():.3f} {name} event loop stalled {lag:.2f}s", file=sys.stderr)
    task.result()


def _serving(service: object) -> int:
    tenants = getattr(service, "tenants", None)
    if tenants is None:
        tenants = getattr(service, "workers", {})
    return len(tenants)


# --- the measuring process --------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    started: float
    times: list[float] = field(default_factory=list)  # of each ``consuming`` line
    reader: asyncio.Task[None] | None = None

    def read(self) -> None:
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            if line.startswith(b"consuming "):
                self.times.append(float(line.split()[1]))

    async def consuming(self, after: float, timeout: float) -> float:
        """The unix time of the first ``consuming`` line printed for a start after ``after``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            later = [t for t in self.times if t > after]
            if later:
                return later[0]
            if self.reader is not None and self.reader.done():
                raise RuntimeError(f"replica {self.name} exited")
            await asyncio.sleep(0.05)
        raise TimeoutError(f"replica {self.name} did not consume in {timeout}s")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return kib / 1024


async def start_replica(namespace: str, db_path: str, name: str, src: str | None) -> Replica:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src  # before site-packages: that version's rabbitry
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--replica",
        name,
        namespace,
        db_path,
        stdout=subprocess.PIPE,
        env=env,
    )
    replica = Replica(name, process, time.time())
    replica.read()
    return replica


def connections(prefix: str) -> list[tuple[str, str]]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = []
    for line in out.splitlines():
        pid, _, properties = line.partition("\t")
        named = _NAME.search(properties)
        if named and named.group(1).startswith(prefix):
            found.append((named.group(1), pid))
    return found


def close(pids: list[str]) -> None:
    procs = [
        subprocess.Popen(["rabbitmqctl", "-q", "close_connection", pid, "bench"]) for pid in pids
    ]
    for proc in procs:
        proc.wait()


async def steady(prefix: str) -> list[tuple[str, str]]:
    """The connections named ``prefix…`` once no declaring or old-queue sweep is under way."""
    for _ in range(600):
        found = connections(prefix)
        if not any(n.endswith(("-declarer", "-legacy")) for n, _ in found):
            return found
        await asyncio.sleep(1)
    return found


async def consumers_of(probe: Declarer, queue: str) -> int:
    from rabbitry.errors import NotFound

    try:
        return (await probe.queue_status(queue)).consumers
    except NotFound:
        return 0


async def one_design(label: str, tenants: int, src: str | None, tmp: str) -> dict[str, float]:
    from rabbitry.sessions.tenants import Tenants, declare_tenant
    from rabbitry.storage import Database

    namespace = f"bench{uuid.uuid4().hex[:8]}"
    db_path = f"{tmp}/{namespace}.db"
    settings = settings_for(namespace, db_path)
    figures: dict[str, float] = {"tenants": tenants}
    async with Database(settings.sql_url) as db:
        await db.upgrade()
        store = Tenants(db)
        for n in range(tenants):
            await store.create(f"t{n}")
        replicas = []
        try:
            for name in ("r1", "r2"):
                replica = await start_replica(namespace, db_path, name, src)
                replicas.append(replica)
                ready = await replica.consuming(0, timeout=900)
                figures[f"startup {name} s"] = ready - replica.started
            found = await steady(f"{namespace}-dispatch")
            figures["connections per replica"] = len(found) / 2
            figures["RSS per replica MiB"] = sum(r.rss_mib() for r in replicas) / 2

            # A new tenant, as USER creates it; one probe connection, opened before.
            probe = await Declarer.connect(settings.amqp.url, name=f"{namespace}-probe")
            created = time.monotonic()
            if os.environ.get("BENCH_LOG"):
                print(f"{time.time():.3f} bench: creating the new tenant", file=sys.stderr)
            await store.create("newcomer")
            await declare_tenant(settings, "newcomer")
            # USER's part (an aio-pika connection: declare, announce, close) apart from DISPATCH's.
            figures["of which USER's declare s"] = time.monotonic() - created
            queue = (
                f"{namespace}.tenant.newcomer.session-removal"
                if src
                else f"{namespace}.tenant.newcomer.removals"
            )
            while await consumers_of(probe, queue) < 2:  # noqa: ASYNC110  # polls the broker
                await asyncio.sleep(0.02)
            figures["new tenant served s"] = time.monotonic() - created
            await probe.close()

            # The broker drops every connection of both replicas at once.
            found = connections(f"{namespace}-dispatch")
            dropped = time.time()
            close([pid for _, pid in found])
            back = [await r.consuming(dropped, timeout=900) for r in replicas]
            figures["resubscribe all s"] = max(back) - dropped
        finally:
            for replica in replicas:
                with contextlib.suppress(ProcessLookupError):  # it died already
                    replica.process.terminate()
                await replica.process.wait()
            await cleanup(namespace)
    return figures


async def cleanup(namespace: str) -> None:
    """Delete the run's queues and exchanges."""
    from rabbitry.messaging import Declarer
    from rabbitry.messaging.topology import Exchange, Queue, Topology

    def names(kind: str) -> list[str]:
        out = subprocess.run(
            ["rabbitmqctl", "-q", f"list_{kind}", "--no-table-headers", "name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [n for n in out.split() if n.startswith(namespace)]

    mine = Topology.of(
        queues=[Queue(n) for n in names("queues")],
        exchanges=[Exchange(n) for n in names("exchanges")],
    )
    async with await Declarer.connect("amqp://guest:guest@127.0.0.1:5672/") as declarer:
        await declarer.delete(mine)


async def scale(tenants: int, old_tenants: int, old_src: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            ("one connection, single-active-consumer", await one_design("new", tenants, None, tmp))
        ]
        if old_src:
            rows.append(
                (
                    "today: a connection per tenant, 0.5 s poll",
                    await one_design("old", old_tenants, old_src, tmp),
                )
            )
    keys = list(rows[0][1])
    print("| design | " + " | ".join(keys) + " |")
    print("|---|" + "---:|" * len(keys))
    for label, figures in rows:
        print(
            f"| {label} | " + " | ".join(f"{figures.get(k, float('nan')):.2f}" for k in keys) + " |"
        )
    if len(rows) == 2:
        new, old = rows[0][1], rows[1][1]
        per_tenant_new = new["connections per replica"] / new["tenants"]
        per_tenant_old = old["connections per replica"] / old["tenants"]
        print(f"connections per tenant: {per_tenant_new:.4f} vs {per_tenant_old:.2f}")
        sooner = old["new tenant served s"] / new["new tenant served s"]
        print(f"new tenant served {sooner:.1f}x sooner")


if __name__ == "__main__" and sys.argv[1:2] == ["--replica"]:
    asyncio.run(replica(sys.argv[3], sys.argv[4], sys.argv[2]))
