"""No message lost for an open socket: a gateway whose broker connection is cut while its room
is busy catches its sockets up from the history; a client that missed 300 or 30,000 messages
gets them all through ``since=``, in order, once, then live ones; a gateway told to stop closes
its sockets a few at a time with the code that sends clients elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection, serve

from fixtures.chat import ChatSystem, bindings, chat_system, socket_url
from helpers import close_connections, eventually_true
from rabbitry.chat.history import ChatHistory
from rabbitry.chat.protocol import ChatMessage, MessageIds
from rabbitry.chat.topology import ChatLayout
from rabbitry.config import Settings
from rabbitry.storage import open_database

TENANT = "acme"
CAUGHT_UP = "routed while the queue was away"  # what a gateway logs when a catch-up sent some


@pytest.fixture
def system(tmp_path: Path) -> Iterator[ChatSystem]:
    with chat_system(tmp_path) as running:
        running.create_tenant(TENANT)
        yield running


class Reader:
    """Every frame a socket receives, read as they come (a client that keeps up)."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.frames: list[dict[str, Any]] = []
        self._more = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.socket:
            self.frames.append(json.loads(raw))
            self._more.set()

    async def until(self, count: int, timeout: float = 60) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(self.frames) < count:
                self._more.clear()
                await self._more.wait()
        return self.frames

    def texts(self) -> list[str]:
        return [f["text"] for f in self.frames if "text" in f]


async def _settle(reader: Reader, wait: float = 1.0) -> None:
    """Give stray frames (a repeat, one more than sent) the time to show up."""
    count = -1
    while count != len(reader.frames):
        count = len(reader.frames)
        with pytest.raises(TimeoutError):
            await reader.until(count + 1, timeout=wait)


async def test_a_gateway_whose_connection_is_cut_while_its_room_is_busy_loses_nothing(
    system: ChatSystem,
) -> None:
    layout = ChatLayout(system.namespace)
    senders = [f"s{i}" for i in range(4)]
    for user in ["ann", *senders]:
        system.create_user(TENANT, user)
    tokens = {user: system.login(TENANT, user) for user in ["ann", *senders]}
    first, second = system.gateways
    ann = Reader(await websockets.connect(socket_url(second, "talk", TENANT, tokens["ann"])))
    probe = await websockets.connect(socket_url(second, "probe", TENANT, tokens["ann"]))
    sockets = [
        await websockets.connect(socket_url(first, "talk", TENANT, tokens[s])) for s in senders
    ]
    readers = [Reader(socket) for socket in sockets]
    # The second gateway's queue is the one bound for "probe": its connection has its name.
    (queue,) = {q for q, key in await bindings(layout.dispatch_exchange) if key == "acme.probe"}
    connection = queue.rsplit(".", 1)[0]
    sent: list[str] = []
    ten_sent = asyncio.Event()
    cut_done = asyncio.Event()

    async def talk() -> None:
        # 25 ms apart overall, 100 ms apart per sender: within the rate limit, for as long as
        # the cut and the reconnect take, then 20 more.
        after_cut = 0
        while after_cut < 20:
            text = f"m{len(sent):03d}"
            await sockets[len(sent) % len(sockets)].send(json.dumps({"text": text}))
            sent.append(text)
            if len(sent) == 10:
                ten_sent.set()
            if cut_done.is_set():
                after_cut += 1
            await asyncio.sleep(0.025)

    async def queues() -> set[str]:
        return {q for q, _ in await bindings(layout.dispatch_exchange) if q.startswith(connection)}

    def caught_up() -> int:
        return system.log_of("gateway1").count(CAUGHT_UP)

    async def cut() -> None:
        await ten_sent.wait()
        current = queue
        # A reconnect quick enough that the broker routed none of the messages (25 ms apart)
        # while the queue was away leaves nothing to catch up, and the case unexercised: cut
        # again, at most three times, until a catch-up sent what the queue missed.
        for _ in range(3):
            before = caught_up()
            closed = await asyncio.to_thread(close_connections, connection, "test: cut", exact=True)
            assert closed == 1

            async def rebound(gone: str = current) -> bool:
                return bool(await queues() - {gone})

            await eventually_true(rebound, timeout=60, what="the new queue's bindings")
            (current,) = await queues() - {current}

            async def sent_missed(before: int = before) -> bool:
                return caught_up() > before

            with contextlib.suppress(AssertionError):  # (nothing missed: cut again)
                await eventually_true(sent_missed, timeout=15, what="a catch-up")
                break
        cut_done.set()

    try:
        await asyncio.wait_for(asyncio.gather(talk(), cut()), 120)
        frames = await ann.until(len(sent))
        await _settle(ann)
        # Every message, once; those routed while the queue was away in the store's order
        # (competing workers store them a little out of send order), the rest as sent.
        assert Counter(ann.texts()) == Counter(sent) and len(frames) == len(sent)
        assert ann.texts()[:10] == sent[:10]
        for reader in readers:
            await reader.until(len(sent))
        assert CAUGHT_UP in system.log_of("gateway1")
    finally:
        for socket in [ann.socket, probe, *sockets]:
            await socket.close()


async def test_a_client_that_missed_three_hundred_messages_gets_them_all_then_live_ones(
    system: ChatSystem,
) -> None:
    for user in ("ann", "bob"):
        system.create_user(TENANT, user)
    ann, bob = system.login(TENANT, "ann"), system.login(TENANT, "bob")
    first, second = system.gateways
    async with websockets.connect(socket_url(second, "gap", TENANT, ann)) as socket:
        reader = Reader(socket)
        async with websockets.connect(socket_url(first, "gap", TENANT, bob)) as bob_socket:
            await bob_socket.send(json.dumps({"text": "seen"}))
            (seen,) = await reader.until(1)
    # Ann is away; bob sends 300 through 15 sockets (the rate limit is per socket).
    bobs = [await websockets.connect(socket_url(first, "gap", TENANT, bob)) for _ in range(15)]
    texts = [f"missed {i:03d}" for i in range(300)]
    for i, text in enumerate(texts):
        await bobs[i % 15].send(json.dumps({"text": text}))

    async def stored() -> bool:
        return len(_history(system, bob)) == 301

    await eventually_true(stored, timeout=60, what="the 300 messages in the history")
    try:
        url = socket_url(second, "gap", TENANT, ann, since=seen["id"])
        async with (
            websockets.connect(url) as socket,
            websockets.connect(socket_url(first, "gap", TENANT, bob)) as talker,
        ):
            reader = Reader(socket)
            live = [f"live {i}" for i in range(10)]
            for text in live:  # while the recovery is under way
                await talker.send(json.dumps({"text": text}))
            await reader.until(310)
            await _settle(reader)
            got = reader.texts()
            assert sorted(got) == sorted(texts + live)  # each once
            assert socket.close_code is None  # never "too slow"

        # Fifteen sockets sent at once and competing workers stored them out of send order:
        # the client gets the missed ones in one order, the store's.
        missed = [f["id"] for f in reader.frames if f["text"].startswith("missed")]
        positions = await system.positions(TENANT, "gap", missed)
        assert positions == sorted(positions)
    finally:
        for socket in bobs:
            await socket.close()


@pytest.fixture
def skewed(tmp_path: Path) -> Iterator[ChatSystem]:
    """The second gateway's clock is an hour behind: every id it stamps sorts before the ids
    the first one stamps at the same moment."""
    with chat_system(tmp_path, clock_behind=3600) as running:
        running.create_tenant(TENANT)
        yield running


async def test_a_gateway_whose_clock_runs_behind_cannot_hide_its_messages_from_since(
    skewed: ChatSystem,
) -> None:
    system = skewed
    for user in ("ann", "bob", "cat"):
        system.create_user(TENANT, user)
    ann, bob, cat = (system.login(TENANT, user) for user in ("ann", "bob", "cat"))
    right, behind = system.gateways
    async with (
        websockets.connect(socket_url(right, "skew", TENANT, cat)) as cat_socket,
        websockets.connect(socket_url(behind, "skew", TENANT, bob)) as bob_socket,
    ):
        cat_reader, bob_reader = Reader(cat_socket), Reader(bob_socket)
        async with websockets.connect(socket_url(right, "skew", TENANT, ann)) as socket:
            await cat_socket.send(json.dumps({"text": "seen"}))
            (seen,) = await Reader(socket).until(1)
        # Ann is away: bob (through the gateway behind) and cat talk on, in turn.
        sent: list[str] = []
        for i in range(6):
            talker = bob_socket if i % 2 == 0 else cat_socket
            sent.append(f"{'bob' if i % 2 == 0 else 'cat'} {i}")
            await talker.send(json.dumps({"text": sent[-1]}))
            await cat_reader.until(len(sent) + 1)  # each delivered before the next
        frames = await bob_reader.until(len(sent) + 1)
        bobs = [f["id"] for f in frames if f["sender"] == "bob"]
        assert all(id_ < seen["id"] for id_ in bobs)  # by ids alone, hidden from since

        async def stored() -> bool:
            return len(system.history(TENANT, "skew", ann)) == len(sent) + 1

        await eventually_true(stored, timeout=60, what="the messages in the history")
        for base in (right, behind):
            url = socket_url(base, "skew", TENANT, ann, since=seen["id"])
            async with websockets.connect(url) as socket:
                reader = Reader(socket)
                await reader.until(len(sent))
                await cat_socket.send(json.dumps({"text": f"live via {base}"}))
                await reader.until(len(sent) + 1)
                await _settle(reader)
                # Every message sent after ``seen``, once, in the store's order, then live.
                assert sorted(reader.texts()[:-1]) == sorted(sent)
                assert reader.texts()[-1] == f"live via {base}"
                ids = [f["id"] for f in reader.frames[:-1]]
                positions = await system.positions(TENANT, "skew", ids)
                assert positions == sorted(positions)
            sent.append(f"live via {base}")


def _history(system: ChatSystem, token: str) -> list[dict[str, Any]]:
    """The whole room, newest first, page by page."""
    messages: list[dict[str, Any]] = []
    while True:
        before = {"before": messages[-1]["id"]} if messages else {}
        page = system.history(TENANT, "gap", token, limit=200, **before)
        messages += page
        if len(page) < 200:
            return messages


async def test_a_gap_of_thirty_thousand_messages_is_paged_through_the_socket_then_live(
    system: ChatSystem,
) -> None:
    system.create_user(TENANT, "ann")
    ann = system.login(TENANT, "ann")
    ids = MessageIds()
    start = ids.new()
    missed = [
        ChatMessage(ids.new(), TENANT, "big", "bob", f"old {i:05d}", dt.datetime.now(dt.UTC))
        for i in range(30_000)
    ]
    settings = Settings(namespace=system.namespace, data_dir=system.directory / "var")
    async with open_database(settings.sql_url) as database:
        history = ChatHistory(database)
        for at in range(0, len(missed), 2000):  # what the persistence workers stored
            await history.store(missed[at : at + 2000])
    url = socket_url(system.gateways[1], "big", TENANT, ann, since=start)
    async with websockets.connect(url) as socket:
        reader = Reader(socket)
        await reader.until(100)
        await socket.send(json.dumps({"text": "live"}))  # while the replay goes on
        await reader.until(30_001, timeout=120)
        await _settle(reader)
        assert reader.texts() == [m.text for m in missed] + ["live"]
        assert socket.close_code is None


async def test_a_stopping_gateway_closes_its_sockets_gradually_with_the_reconnect_code(
    system: ChatSystem,
) -> None:
    system.create_user(TENANT, "ann")
    ann = system.login(TENANT, "ann")
    second = system.gateways[1]
    sockets = [
        await websockets.connect(socket_url(second, f"r{i}", TENANT, ann)) for i in range(10)
    ]
    async with httpx.AsyncClient(base_url=second, timeout=10) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["services"]["chat-gateway"] == "consuming"
        process = system.terminate("gateway1")

        async def turned_not_ready() -> bool:
            answer = await http.get("/readyz")
            return answer.status_code == 503 and (
                answer.json().get("services", {}).get("chat-gateway") == "draining"
            )

        # Readiness turns false first: the load balancer stops sending clients here while
        # the sockets are still being closed.
        await eventually_true(turned_not_ready, what="/readyz to say draining")
        assert not all(s.close_code for s in sockets)
    done, pending = await asyncio.wait(
        [asyncio.create_task(s.wait_closed()) for s in sockets],
        timeout=30,
        return_when=asyncio.FIRST_COMPLETED,
    )
    assert done and pending  # not all at once: a stampede onto the other instances
    await asyncio.wait_for(asyncio.gather(*pending), 30)
    assert {s.close_code for s in sockets} == {1001}
    await asyncio.wait_for(asyncio.to_thread(process.wait), 60)
    assert process.returncode == 0


async def test_the_client_loop_in_the_docs_reconnects_with_since_and_stops_when_revoked() -> None:
    page = (Path(__file__).parents[2] / "docs" / "chat.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    scope: dict[str, Any] = {}
    exec(compile(example, "docs/chat.md", "exec"), scope)
    # A stand-in for a gateway: the first socket gets two messages and is closed as a
    # gateway scaling in closes it; the second must ask for what came after the second.
    ids = MessageIds()
    first, second, third = (ids.new() for _ in range(3))
    asked: list[str] = []

    async def gateway(socket: ServerConnection) -> None:
        query = parse_qs(urlsplit(socket.request.path if socket.request else "").query)
        asked.append(query.get("since", [""])[0])
        if len(asked) == 1:
            for id_ in (first, second):
                await socket.send(json.dumps({"id": id_, "text": id_}))
            await socket.close(1012, "the gateway is scaling in: reconnect")
        else:
            await socket.send(json.dumps({"id": third, "text": third}))
            await socket.close(4001, "session revoked")

    shown: list[str] = []
    async with serve(gateway, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"ws://127.0.0.1:{port}/chat/ws/lobby?tenant=acme&token=t"
        await asyncio.wait_for(scope["follow"](url, lambda f: shown.append(f["id"])), 30)
    assert asked == ["", second]
    assert shown == [first, second, third]
