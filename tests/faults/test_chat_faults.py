"""The chat gateways and their history on the three-node cluster, through a fault while rooms
are busy: no open socket misses a message, none shows one twice, each shows every sender's
messages in the order they were sent, and the history stores each message once.

The system runs as its processes do in production: ``rabbitry up`` (sessions, gateway 0, a
chat-persist worker, the outbox relay), ``rabbitry serve chat`` (gateway 1) and a second
``rabbitry worker chat-persist``, on the cluster URL (all three hosts) with quorum queues and
everything stored in PostgreSQL. Three rooms of four clients each, two clients of each room on
each gateway; every client sends a message about every quarter of a second (48 a second in
all) before, during and after the fault, and a reader in each room on gateway 1 (one that
steps out through the PostgreSQL outage and comes back with ``since=``). A client behaves as
docs/chat.md's does: it drops an id it has shown (a repeat is counted, not shown) and
reconnects with ``since=`` if its socket closes (counted: an open socket should stay open
through a broker fault).

The faults: the broker closes a gateway's connection; kill -9 of its node; a stop and start of
the whole cluster; PostgreSQL gone for 10 s (the processes reach it through a proxy the test
cuts; the server itself serves everyone's tests and is left alone); a memory alarm of 4 s.

Counted per case: messages sent (the client wrote the frame), confirmed by the broker, through
the outbox (a route the broker did not confirm, relayed later), stored in the history; the
deliveries due (each message to each client of its room), shown, repeats the clients dropped,
missing, shown after a later message of their sender (and how many of those were not relayed
from the outbox: a relayed message comes after its sender's later ones by design), sockets
closed. ``RABBITRY_FAULTS_DUMP=FILE`` appends every socket's frames to FILE, a JSON object a
line, to study a disorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import websockets
from sqlalchemy import select

from faults.conftest import CLUSTER_URL, Cluster, Figures
from fixtures.chat import ChatSystem
from fixtures.outbox import LatencyProxy
from helpers import eventually_true, scratch_database
from rabbitry.chat.models import StoredChatMessage
from rabbitry.chat.topology import ChatLayout
from rabbitry.messaging.topology import dlq_name
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.storage import Database

TENANT = "acme"
ROOMS = 3
PER_ROOM = 4  # clients per room: half on each gateway
PACE = 0.25  # seconds between one client's messages (the gateway allows 10 a second)
BEFORE = 3.0  # seconds of traffic before the fault
AFTER = 4.0  # seconds of traffic after the system is whole again
ARRIVAL = 90.0  # how long every client may take to show every message of its room


_GATEWAY = re.compile(r'rabbitry_chat_sockets\{gateway="([^"]+)"\}')


class Client:
    """One user in one room through one gateway, as docs/chat.md's client: ``frames`` is every
    message frame the sockets received, ``shown`` each id once."""

    def __init__(self, name: str, room: str, url: str, *, talks: bool = True) -> None:
        self.name = name
        self.room = room
        self.url = url
        self.talks = talks
        """False for a client that only reads (a probe, or one that steps out)."""
        self.frames: list[dict[str, Any]] = []
        self.shown: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.closes: list[int | None] = []
        self.sent: list[str] = []
        self._socket: websockets.ClientConnection | None = None
        self._open = asyncio.Event()
        self._leaving = False
        self._present = asyncio.Event()  # cleared while the user stepped out
        self._present.set()
        self._task = asyncio.create_task(self._follow())

    async def opened(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._open.wait(), timeout)

    async def _follow(self) -> None:
        last: str | None = None
        seen: set[str] = set()
        while not self._leaving:
            await self._present.wait()
            query = f"&{urlencode({'since': last})}" if last else ""
            try:
                async with websockets.connect(self.url + query) as socket:
                    self._socket = socket
                    self._open.set()
                    async for raw in socket:
                        frame = json.loads(raw)
                        if "error" in frame:
                            self.errors.append(frame["error"])
                        elif "id" in frame:
                            self.frames.append(frame)
                            if frame["id"] not in seen:
                                seen.add(frame["id"])
                                self.shown.append(frame)
                                last = frame["id"]
                    if not self._leaving and self._present.is_set():
                        self.closes.append(socket.close_code)
            except websockets.ConnectionClosed as closed:
                if not self._leaving and self._present.is_set():
                    self.closes.append(closed.rcvd.code if closed.rcvd else None)
            except OSError:
                self.closes.append(None)
            finally:
                self._open.clear()
                self._socket = None
            if not self._leaving and self._present.is_set():
                await asyncio.sleep(random.uniform(0.5, 2.0))

    async def talk(self, stop: asyncio.Event) -> None:
        """Send a numbered message every :data:`PACE` seconds or so until ``stop``."""
        await asyncio.sleep(random.uniform(0, PACE))
        while not stop.is_set():
            await self.send_one()
            await asyncio.sleep(PACE * random.uniform(0.8, 1.2))

    async def send_one(self) -> None:
        """Send the next numbered message, if the socket is open."""
        socket = self._socket
        if socket is not None:
            text = f"{self.name} {len(self.sent):05d}"
            with contextlib.suppress(websockets.ConnectionClosed):
                await socket.send(json.dumps({"text": text}))
                self.sent.append(text)

    async def step_out(self) -> None:
        """Close the socket (as a user who closes the page) and stay away until
        :meth:`come_back`, which reconnects with ``since=`` the last message shown."""
        self._present.clear()
        if self._socket is not None:
            await self._socket.close()

    def come_back(self) -> None:
        self._present.set()

    async def leave(self) -> None:
        self._leaving = True
        self._present.set()
        if self._socket is not None:
            await self._socket.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class Chat:
    """The running system, its clients and its database."""

    system: ChatSystem
    cluster: Cluster
    database: Database
    proxy: LatencyProxy | None = None
    """Where the chat processes reach PostgreSQL, when the case cuts it (the test does not)."""
    back: dt.datetime | None = None
    """When the database came back for them (the PostgreSQL case)."""
    clients: list[Client] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return self.system.namespace

    async def connection_of(self, gateway: int) -> str:
        """The name of gateway ``gateway``'s queue connection (its instance, from /metrics)."""
        async with httpx.AsyncClient(timeout=30) as http:
            metrics = (await http.get(f"{self.system.gateways[gateway]}/metrics")).text
        (instance,) = set(_GATEWAY.findall(metrics))
        return f"{self.namespace}.chat.gateway.{instance}"

    async def echoed(self, gateway: int, timeout: float = 120.0) -> None:
        """Wait until gateway ``gateway``'s queue is bound again: a message sent from now on
        in a room only it has comes back (one every half second until one does)."""
        probe = next(c for c in self.clients if c.room == f"probe{gateway}")
        first = len(probe.sent)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(int(f["text"].split(" ")[1]) >= first for f in probe.shown):
            if loop.time() > deadline:
                raise AssertionError(f"gateway {gateway} not bound again after {timeout:g}s")
            await probe.send_one()
            await asyncio.sleep(0.5)

    async def stored(self) -> dict[str, str]:
        """The history: text -> id of every stored message."""
        async with self.database.session() as session:
            rows = await session.execute(select(StoredChatMessage.text, StoredChatMessage.id))
            return {text: id_ for text, id_ in rows}

    async def when_stored(self) -> dict[str, tuple[int | None, str]]:
        """The history: text -> (position, when stored), for a dump."""
        async with self.database.session() as session:
            rows = await session.execute(
                select(StoredChatMessage.text, StoredChatMessage.seq, StoredChatMessage.stored_at)
            )
            return {text: (seq, at.isoformat()) for text, seq, at in rows}

    async def to_the_outbox(self) -> list[float]:
        """Seconds from each message's send (the gateway's clock) to its first outbox row
        (the same process's clock)."""
        async with self.database.session() as session:
            rows = await session.execute(
                select(
                    StoredChatMessage.id, StoredChatMessage.sent_at, OutboxMessageRecord.created_at
                ).join(StoredChatMessage, StoredChatMessage.id == OutboxMessageRecord.message_id)
            )
            first: dict[str, float] = {}
            for id_, sent_at, created_at in rows:
                seconds = (
                    created_at.replace(tzinfo=None) - sent_at.replace(tzinfo=None)
                ).total_seconds()
                first[id_] = min(first.get(id_, seconds), seconds)
        return sorted(first.values())

    async def held_back(self, back: dt.datetime) -> int:
        """Messages sent before ``back`` and stored in the history after it."""
        async with self.database.session() as session:
            rows = await session.execute(
                select(StoredChatMessage.sent_at, StoredChatMessage.stored_at)
            )
            naive = back.replace(tzinfo=None)
            return sum(
                1
                for sent_at, stored_at in rows
                if sent_at.replace(tzinfo=None) < naive < stored_at.replace(tzinfo=None)
            )

    async def outbox(self) -> tuple[set[str], int]:
        """The ids of messages with a route in the outbox, and how many rows are pending."""
        async with self.database.session() as session:
            rows = await session.execute(
                select(OutboxMessageRecord.message_id, OutboxMessageRecord.processed)
            )
            found = [(id_, done) for id_, done in rows]
        return {id_ for id_, _ in found}, sum(1 for _, done in found if not done)


@contextlib.asynccontextmanager
async def chat_on_the_cluster(
    cluster: Cluster, namespace: str, tmp_path: Path, proxy: LatencyProxy | None = None
) -> AsyncIterator[Chat]:
    """The system on the cluster; with a ``proxy`` (to PostgreSQL), its processes reach the
    database through it, and only the test's own reads go straight to PostgreSQL."""
    async with scratch_database("postgresql", tmp_path) as url:
        env = {
            "RABBITRY_AMQP_URL": CLUSTER_URL,
            "RABBITRY_QUEUE_TYPE": "quorum",
            "RABBITRY_DATABASE_URL": url.replace(":5432/", f":{proxy.port}/") if proxy else url,
        }
        system = ChatSystem(tmp_path, env=env)
        system.namespace = namespace
        system.env["RABBITRY_NAMESPACE"] = namespace
        try:
            await asyncio.to_thread(system.start)
            database = Database(url)
            try:
                yield Chat(system, cluster, database, proxy)
            finally:
                await database.close()
        finally:
            await asyncio.to_thread(system.stop)


async def connect(chat: Chat) -> None:
    system = chat.system
    await asyncio.to_thread(system.create_tenant, TENANT)
    bases = system.gateways
    for room in range(ROOMS):
        for seat in range(PER_ROOM):
            name = f"u{room}{seat}"
            await asyncio.to_thread(system.create_user, TENANT, name)
            token = await asyncio.to_thread(system.login, TENANT, name)
            base = bases[seat % 2].replace("http://", "ws://")
            url = f"{base}/chat/ws/r{room}?{urlencode({'tenant': TENANT, 'token': token})}"
            chat.clients.append(Client(name, f"r{room}", url))
    # A room on gateway 1 alone: its binding names gateway 1's queue.
    for gateway in (0, 1):
        name = f"probe{gateway}"
        await asyncio.to_thread(system.create_user, TENANT, name)
        token = await asyncio.to_thread(system.login, TENANT, name)
        base = bases[gateway].replace("http://", "ws://")
        url = f"{base}/chat/ws/{name}?{urlencode({'tenant': TENANT, 'token': token})}"
        chat.clients.append(Client(name, name, url, talks=False))
    # A reader in each room (gateway 1) that a case may step out and back with ``since=``.
    for room in range(ROOMS):
        name = f"away{room}"
        await asyncio.to_thread(system.create_user, TENANT, name)
        token = await asyncio.to_thread(system.login, TENANT, name)
        base = bases[1].replace("http://", "ws://")
        url = f"{base}/chat/ws/r{room}?{urlencode({'tenant': TENANT, 'token': token})}"
        chat.clients.append(Client(name, f"r{room}", url, talks=False))
    for client in chat.clients:
        await client.opened()


Fault = Callable[[Chat], Awaitable[None]]


async def run_case(chat: Chat, figures: Figures, case: str, fault: Fault) -> None:
    await connect(chat)
    talkers = [c for c in chat.clients if c.talks]
    readers = [c for c in chat.clients if c.name.startswith("away")]
    stop = asyncio.Event()
    talking = [asyncio.create_task(c.talk(stop)) for c in talkers]
    try:
        await asyncio.sleep(BEFORE)
        started = time.monotonic()
        await fault(chat)
        figures.latency(
            f"chat, {case}: a message comes back in a room only the gateway has after",
            time.monotonic() - started,
        )
        await asyncio.sleep(AFTER)
    finally:
        stop.set()
        await asyncio.gather(*talking)

    texts = [t for c in talkers for t in c.sent]

    async def relayed() -> bool:
        return (await chat.outbox())[1] == 0

    async def all_stored() -> bool:
        return len((await chat.stored()).keys() & set(texts)) == len(texts)

    async def all_shown() -> bool:
        return all(_missing(c, talkers) == [] for c in [*talkers, *readers])

    arrival = time.monotonic()
    with contextlib.suppress(AssertionError):  # counted and asserted below
        await eventually_true(relayed, timeout=ARRIVAL, what="the outbox relayed")
        await eventually_true(all_stored, timeout=ARRIVAL, what="every message stored")
        await eventually_true(all_shown, timeout=ARRIVAL, what="every message shown")
    figures.latency(f"chat, {case}: every message shown after", time.monotonic() - arrival)
    await asyncio.sleep(2.0)  # a late repeat has the time to show up

    stored = await chat.stored()
    through_outbox, _ = await chat.outbox()
    ids = {stored[t] for t in texts if t in stored}
    outboxed = len(ids & through_outbox)
    # The readers count with the talkers: each is due every message of its room.
    listeners = [*talkers, *readers]
    due = sum(len(texts_of_room(c.room, talkers)) for c in listeners)
    shown = sum(len(c.shown) for c in listeners)
    repeats = sum(len(c.frames) - len(c.shown) for c in listeners)
    missing = {c.name: _missing(c, talkers) for c in listeners}
    # A message whose dispatch copy went through the outbox is relayed seconds later, after
    # its sender's next ones: out of order everywhere, by the outbox's design (counted); any
    # other message shown out of its sender's order is a defect.
    relayed_texts = {t for t in texts if stored.get(t) in through_outbox}
    late = {c.name: _out_of_order(c) for c in listeners}
    disordered = {n: [t for t in d if t not in relayed_texts] for n, d in late.items()}
    closes = {c.name: c.closes for c in listeners if c.closes}
    if os.environ.get("RABBITRY_FAULTS_DUMP"):  # every socket's frames, to study a disorder
        _dump(
            os.environ["RABBITRY_FAULTS_DUMP"],
            [
                {"case": case, "client": c.name, "room": c.room, "url": c.url}
                | {"frames": [[f["id"], f["text"]] for f in c.frames]}
                | {"relayed": sorted(relayed_texts), "late": disordered[c.name]}
                for c in listeners
            ]
            + [{"case": case, "history": await chat.when_stored()}],
        )
    errors = {c.name: c.errors for c in chat.clients if c.errors}
    figures.add_chat(
        case,
        len(texts),
        len(texts) - outboxed,
        outboxed,
        len(stored.keys() & set(texts)),
        due,
        shown,
        repeats,
        sum(map(len, missing.values())),
        f"{sum(map(len, late.values()))} ({sum(map(len, disordered.values()))} not relayed)",
        sum(map(len, closes.values())),
    )
    if outboxed:
        seconds = await chat.to_the_outbox()
        figures.latency(
            f"chat, {case}: from a send to the outbox, median", seconds[len(seconds) // 2]
        )
        figures.latency(f"chat, {case}: from a send to the outbox, the slowest", seconds[-1])
    if chat.back is not None:
        late_in_history = await chat.held_back(chat.back)
        figures.count(f"chat, {case}: sent before it, stored in the history after", late_in_history)
        assert late_in_history > 0, "the outage kept no history write back: the case tested nothing"
    dead = await chat.cluster.read_ids(dlq_name(ChatLayout(chat.namespace).history_queue))
    for client in chat.clients:
        await client.leave()
    assert dead == [], f"{len(dead)} history copies dead-lettered"
    assert errors == {}
    assert repeats == 0  # (a room sends each id once; the client would drop a repeat)
    assert set(stored) >= set(texts), f"{len(set(texts) - set(stored))} not in the history"
    assert len(stored) == len(set(stored.values()))  # (each stored once: ids are the key)
    assert {n: m for n, m in missing.items() if m} == {}
    assert {n: d for n, d in disordered.items() if d} == {}
    # Every shown message was sent, to that room.
    for client in talkers:
        assert {f["text"] for f in client.shown} <= set(texts_of_room(client.room, talkers))
    assert closes == {}


def _dump(path: str, rows: list[dict[str, Any]]) -> None:
    """Append ``rows`` to ``path``, a JSON object a line (RABBITRY_FAULTS_DUMP)."""
    with open(path, "a") as dump:
        dump.writelines(json.dumps(row) + "\n" for row in rows)


def texts_of_room(room: str, clients: list[Client]) -> list[str]:
    return [t for c in clients if c.room == room for t in c.sent]


def _missing(client: Client, talkers: list[Client]) -> list[str]:
    shown = {f["text"] for f in client.shown}
    return [t for t in texts_of_room(client.room, talkers) if t not in shown]


def _out_of_order(client: Client) -> list[str]:
    """Messages shown after a later one of the same sender."""
    last: Counter[str] = Counter()
    late: list[str] = []
    for frame in client.shown:
        name, number = frame["text"].split(" ")
        if int(number) < last[name]:
            late.append(frame["text"])
        last[name] = max(last[name], int(number))
    return late


# --- the faults ------------------------------------------------------------------------------


async def close_gateway_connection(chat: Chat) -> None:
    """``rabbitmqctl close_connection`` on gateway 1's queue connection."""
    assert await chat.cluster.close_connections(await chat.connection_of(1), exact=True) == 1
    await chat.echoed(1)


async def kill_gateway_node(chat: Chat) -> None:
    """``kill -9`` of the node gateway 1's queue connection is on (left down till the end)."""
    ((_, node),) = await chat.cluster.connections(await chat.connection_of(1), exact=True)
    await chat.cluster.kill(node)
    await chat.echoed(1)
    await chat.echoed(0)


async def restart_cluster(chat: Chat) -> None:
    """Stop every node (gracefully), 5 s of traffic into the outbox, start them again."""
    await chat.cluster.stop(1, 2, 3)
    await asyncio.sleep(5.0)
    await chat.cluster.start(1, 2, 3)
    await chat.echoed(0)
    await chat.echoed(1)


async def postgresql_gone(chat: Chat) -> None:
    """PostgreSQL gone for 10 s for the chat processes: the proxy they reach it through hangs
    up every connection and refuses new ones (the shared server is not stopped). A reader in
    each room steps out as it goes and comes back with ``since=`` once it is back."""
    assert chat.proxy is not None
    away = [c for c in chat.clients if c.name.startswith("away")]
    await asyncio.gather(*(c.step_out() for c in away))
    await chat.proxy.cut()
    await asyncio.sleep(10.0)  # the outage itself, not a synchronisation
    chat.proxy.refusing = False
    chat.back = dt.datetime.now(dt.UTC)
    for client in away:
        client.come_back()
    await chat.echoed(0)
    await chat.echoed(1)


async def memory_alarm(chat: Chat) -> None:
    """A memory alarm of 4 s on the cluster: every connection that publishes is blocked."""
    async with chat.cluster.memory_alarm():
        await asyncio.sleep(4.0)  # the alarm itself, not a synchronisation
    await chat.echoed(0)
    await chat.echoed(1)


CASES = {
    "`rabbitmqctl close_connection` on a gateway's connection": close_gateway_connection,
    "kill -9 the node a gateway is connected to": kill_gateway_node,
    "stop and start the whole cluster": restart_cluster,
    "PostgreSQL gone for 10 s": postgresql_gone,
    "a memory alarm of 4 s": memory_alarm,
}
THROUGH_A_PROXY = {"PostgreSQL gone for 10 s"}  # (the chat processes' database)


@pytest.mark.parametrize("case", list(CASES))
async def test_open_sockets_get_every_message_once_and_in_order_through_a_fault(
    case: str, faults: Cluster, namespace: str, tmp_path: Path, figures: Figures
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        proxy = None
        if case in THROUGH_A_PROXY:
            proxy = LatencyProxy(0.0, upstream=("127.0.0.1", 5432))
            await stack.enter_async_context(proxy)
        chat = await stack.enter_async_context(
            chat_on_the_cluster(faults, namespace, tmp_path, proxy)
        )
        await run_case(chat, figures, case, CASES[case])
