"""The fault suite's fixtures: a local three-node RabbitMQ cluster and what breaks it.

* ``cluster`` (session) — ``scripts/cluster up`` once per session (about 40 s from nothing, 3 s
  when it already runs); at the end of the session ``scripts/cluster down`` if this session
  started it, so a CI run leaves nothing running and a developer's cluster stays up.
* ``faults`` — the cluster for one test: every node the test kills, stops or freezes, and a
  memory alarm it raises, is restored after it, pass or fail; the test's namespace is deleted
  from the cluster.
* ``cluster_settings`` — the test's settings on the cluster URL (all three hosts) with quorum
  queues.
* ``figures`` — where a case records its counts (sent, confirmed, stored, arrived, duplicates,
  lost; the chat cases their own columns, :data:`CHAT_COLUMNS`) and latencies; the tables are
  printed at the end of the run (docs/reliability.md).

The machine's own broker on 5672 is never touched here: alarms and kills stay on the cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest
from pydantic import SecretStr

from rabbitry.amqp.declarer import Declarer
from rabbitry.config import Settings
from rabbitry.messaging.settings import QueueType
from rabbitry.messaging.topology import Exchange, Queue, Topology

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "cluster"
NODES = (1, 2, 3)
# RABBITRY_CLUSTER_PORT moves the cluster (scripts/cluster reads it too), so that two checkouts
# can each run the fault suite on their own cluster.
BASE_PORT = int(os.environ.get("RABBITRY_CLUSTER_PORT", "5680"))
CLUSTER_URL = "amqp://guest:guest@" + ",".join(f"127.0.0.1:{BASE_PORT + n}" for n in NODES) + "/"
# Starting the cluster from nothing takes about 40 s on two busy cores; a restart after the
# whole cluster stopped, about 20 s.
SCRIPT_TIMEOUT = 240
_CONNECTION_NAME = re.compile(r'\{"connection_name","([^"]*)"\}')
_SERVER_PORT = re.compile(r"-> [^\t]*:(\d+)$")


def node_url(node: int) -> str:
    """The URL of one node of the cluster."""
    return f"amqp://guest:guest@127.0.0.1:{BASE_PORT + node}/"


def run_script(*args: str) -> str:
    """``scripts/cluster ARGS``; its stdout. A failure fails the test."""
    done = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"scripts/cluster {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Cluster:
    """The local cluster as a test breaks it; :meth:`restore` mends what it broke."""

    url: str = CLUSTER_URL
    down: set[int] = field(default_factory=set)
    frozen: set[int] = field(default_factory=set)
    alarmed: bool = False

    async def script(self, *args: str) -> str:
        return await asyncio.to_thread(run_script, *args)

    async def kill(self, *nodes: int) -> None:
        """``kill -9``: a crash, its sockets reset."""
        self.down.update(nodes)
        await self.script("kill", *map(str, nodes))

    async def stop(self, *nodes: int) -> None:
        """A graceful stop (clients get CONNECTION_FORCED)."""
        self.down.update(nodes)
        await self.script("stop", *map(str, nodes))

    async def start(self, *nodes: int) -> None:
        """Start nodes again; returns once they answer."""
        await self.script("start", *map(str, nodes))
        self.down.difference_update(nodes)

    async def freeze(self, node: int) -> None:
        """SIGSTOP: the node falls silent with its sockets open, as a hung host does."""
        self.frozen.add(node)
        await self.script("freeze", str(node))

    async def thaw(self, node: int) -> None:
        await self.script("thaw", str(node))
        self.frozen.discard(node)

    async def ctl(self, node: int, *args: str) -> str:
        return await self.script("ctl", str(node), *args)

    async def connections(self, name_part: str, *, exact: bool = False) -> list[tuple[str, int]]:
        """(pid, node) of every connection whose name contains ``name_part`` (or is it, with
        ``exact``)."""
        node = next(n for n in NODES if n not in self.down and n not in self.frozen)
        out = await self.ctl(
            node, "list_connections", "--no-table-headers", "pid", "name", "client_properties"
        )
        found = []
        for line in out.splitlines():
            pid, name, properties = [*line.split("\t"), "", ""][:3]
            named = _CONNECTION_NAME.search(properties)
            port = _SERVER_PORT.search(name)
            matches = named.group(1) == name_part if exact and named else False
            if named and (matches or (not exact and name_part in named.group(1))) and port:
                found.append((pid, int(port.group(1)) - BASE_PORT))
        return found

    async def close_connections(self, name_part: str, *, exact: bool = False) -> int:
        """``rabbitmqctl close_connection`` for each connection ``name_part`` names."""
        found = await self.connections(name_part, exact=exact)
        for pid, _ in found:
            await self.ctl(self.live_node(), "close_connection", pid, "closed by the fault test")
        return len(found)

    @contextlib.asynccontextmanager
    async def memory_alarm(self) -> AsyncIterator[None]:
        """A memory alarm (on node 1; RabbitMQ blocks publishers on every node for it)."""
        self.alarmed = True
        await self.ctl(1, "set_vm_memory_high_watermark", "0.0000001")
        try:
            yield
        finally:
            await self._clear_alarm()

    async def _clear_alarm(self) -> None:
        await self.ctl(1, "set_vm_memory_high_watermark", "0.4")
        self.alarmed = False

    async def restore(self) -> None:
        """Every node running, thawed, in the cluster, and no alarm."""
        if self.down or self.frozen:
            await self.script("up")  # thaws, starts what is down, waits until all answer
            self.down.clear()
            self.frozen.clear()
        if self.alarmed:
            await self._clear_alarm()

    async def settled(self, timeout: float = 90.0) -> None:
        """Wait until every node takes a quorum queue: after a restart the nodes answer on
        their ports some seconds before the quorum queues' Raft system is back, and a declare
        in between fails with INTERNAL_ERROR."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for node in NODES:
            while True:
                try:
                    connection = await aio_pika.connect(node_url(node), timeout=10)
                    async with connection:
                        channel = await connection.channel()
                        probe = await channel.declare_queue(
                            f"fault-settled-{node}",
                            durable=True,
                            arguments={"x-queue-type": "quorum"},
                        )
                        await probe.delete(if_unused=False, if_empty=False)
                    break
                except (TimeoutError, aio_pika.exceptions.AMQPError, OSError) as exc:
                    if loop.time() > deadline:
                        raise AssertionError(f"node {node} takes no quorum queue: {exc!r}") from exc
                    await asyncio.sleep(1.0)

    async def leader(self, queue: str) -> int:
        """The node that leads the quorum queue ``queue``."""
        out = await self.ctl(
            self.live_node(), "list_queues", "--no-table-headers", "name", "leader"
        )
        for line in out.splitlines():
            name, _, node = line.partition("\t")
            if name == queue:
                return int(node.split("@")[0][-1])  # PREFIXn@localhost
        raise AssertionError(f"no queue {queue} on the cluster")

    async def lead(self, queue: str, node: int, timeout: float = 30.0) -> None:
        """Make ``node`` lead the quorum queue ``queue`` (Ra's leadership transfer), so that a
        case can kill the node a client is on *and* the queue's leader."""
        if await self.leader(queue) == node:
            return
        await self.ctl(
            node,
            "eval",
            f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"{queue}">>)),'
            " {Ra, Leader} = amqqueue:get_pid(Q),"
            " ra:transfer_leadership({Ra, Leader}, {Ra, node()}).",
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while await self.leader(queue) != node:
            if loop.time() > deadline:
                raise AssertionError(f"node {node} does not lead {queue} after {timeout:g}s")
            await asyncio.sleep(0.5)

    def live_node(self) -> int:
        """A node neither down nor frozen."""
        return next(n for n in NODES if n not in self.down and n not in self.frozen)

    async def read_ids(self, queue: str, *, quiet: float = 10.0) -> list[str]:
        """Take every message ``queue`` holds (acked: the test is done with them); their
        message ids, duplicates included. Fails if they stop arriving for ``quiet`` seconds."""
        connection = await aio_pika.connect(
            node_url(self.live_node()), client_properties={"connection_name": "fault-reader"}
        )
        ids: list[str] = []
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            declared = await channel.declare_queue(queue, passive=True)
            held = declared.declaration_result.message_count or 0
            if held:
                async with declared.iterator(no_ack=True, timeout=quiet) as messages:
                    async for message in messages:
                        ids.append(str(message.message_id))
                        if len(ids) >= held:
                            break
        return ids

    async def read_headers(self, queue: str) -> list[tuple[bytes, dict[str, object]]]:
        """Take every message ``queue`` holds: (body, headers) of each."""
        connection = await aio_pika.connect(
            node_url(self.live_node()), client_properties={"connection_name": "fault-reader"}
        )
        taken: list[tuple[bytes, dict[str, object]]] = []
        async with connection:
            channel = await connection.channel()
            declared = await channel.declare_queue(queue, passive=True)
            while (got := await declared.get(no_ack=True, fail=False)) is not None:
                taken.append((got.body, dict(got.headers or {})))
        return taken

    async def delete_namespace(self, namespace: str) -> None:
        """Delete every queue and exchange named ``<namespace>...`` on the cluster."""
        queues = await self.ctl(1, "list_queues", "--no-table-headers", "name")
        exchanges = await self.ctl(1, "list_exchanges", "--no-table-headers", "name")
        mine = Topology.of(
            queues=[Queue(n) for n in queues.split() if n.startswith(namespace)],
            exchanges=[Exchange(n) for n in exchanges.split() if n.startswith(namespace)],
        )
        if mine.queues or mine.exchanges:
            async with await Declarer.connect(self.url, name=f"{namespace}-cleanup") as declarer:
                await declarer.delete(mine)


CHAT_COLUMNS = (
    "fault",
    "sent",
    "confirmed",
    "through the outbox",
    "stored in the history",
    "deliveries due",
    "shown",
    "repeats dropped by the client",
    "missing",
    "out of sender order (not relayed)",
    "sockets closed",
)


@dataclass
class Figures:
    """The fault cases' counts and latencies, printed as a table after the run."""

    rows: list[tuple[str, int, int, int, int, int, int]] = field(default_factory=list)
    chat: list[tuple[str, ...]] = field(default_factory=list)
    latencies: list[tuple[str, float]] = field(default_factory=list)
    counts: list[tuple[str, int]] = field(default_factory=list)

    def add(
        self,
        case: str,
        sent: int,
        confirmed: int,
        stored: int,
        arrived: list[str],
        lost: set[str],
    ) -> None:
        duplicates = len(arrived) - len(set(arrived))
        self.rows.append((case, sent, confirmed, stored, len(arrived), duplicates, len(lost)))

    def add_chat(self, case: str, *counts: object) -> None:
        """One row of the chat table (its columns: :data:`CHAT_COLUMNS`)."""
        assert len(counts) == len(CHAT_COLUMNS) - 1
        self.chat.append((case, *map(str, counts)))

    def latency(self, what: str, seconds: float) -> None:
        self.latencies.append((what, seconds))

    def count(self, what: str, n: int) -> None:
        self.counts.append((what, n))

    def lines(self) -> list[str]:
        out: list[str] = []
        if self.rows:
            out += [
                "| fault | sent | confirmed | stored in the outbox | arrived | duplicates | lost |",
                "|---|---:|---:|---:|---:|---:|---:|",
            ]
            out += ["| " + " | ".join(map(str, row)) + " |" for row in self.rows]
        if self.chat:
            out += ["| " + " | ".join(CHAT_COLUMNS) + " |"]
            out += ["|---" + "|---:" * (len(CHAT_COLUMNS) - 1) + "|"]
            out += ["| " + " | ".join(row) + " |" for row in self.chat]
        out += [f"{what}: {seconds:.2f} s" for what, seconds in self.latencies]
        out += [f"{what}: {n}" for what, n in self.counts]
        return out


_FIGURES = pytest.StashKey[Figures]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """The run's :class:`Figures`."""
    return request.config.stash.setdefault(_FIGURES, Figures())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found = terminalreporter.config.stash.get(_FIGURES, None)
    if found is not None and (found.rows or found.chat or found.latencies or found.counts):
        terminalreporter.section("fault figures")
        for line in found.lines():
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local cluster, up; stopped at the end of the session if this session started it."""
    already = run_script("status").count(" running") == len(NODES)
    run_script("up")
    try:
        yield Cluster()
    finally:
        if not already:
            run_script("down")


@pytest.fixture
async def faults(cluster: Cluster, namespace: str) -> AsyncIterator[Cluster]:
    """The cluster for one test, mended after it (pass or fail) and cleared of its namespace."""
    await cluster.settled()  # the test before may have restarted it
    try:
        yield cluster
    finally:
        await cluster.restore()
        await cluster.delete_namespace(namespace)


@pytest.fixture
def cluster_settings(settings: Settings) -> Settings:
    """The test's settings on the whole cluster, with quorum queues."""
    return settings.model_copy(
        update={"amqp_url": SecretStr(CLUSTER_URL), "queue_type": QueueType.QUORUM}
    )
