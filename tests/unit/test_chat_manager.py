"""Manager, VirtualRoom and ConnectedClient on a recording binder (no broker): the seed's room
life cycle, fan-out to every socket including the sender's, slow clients, catching up."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from rabbitry.chat.client import TOO_SLOW, ConnectedClient, Member
from rabbitry.chat.manager import REVOKED, Manager
from rabbitry.chat.protocol import MESSAGE_TYPE, ChatMessage, MessageIds
from rabbitry.chat.topology import ChatLayout
from rabbitry.messaging.envelope import Message

IDS = MessageIds()


class RecordingBinder:
    def __init__(self) -> None:
        self.wanted: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    def want(self, key: str) -> None:
        self.wanted.add(key)
        self.calls.append(("want", key))

    def drop(self, key: str) -> None:
        self.wanted.discard(key)
        self.calls.append(("drop", key))

    async def bound(self, key: str, timeout: float) -> bool:
        return key in self.wanted


class Sink:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, text: str) -> None:
        await self.gate.wait()
        self.frames.append(json.loads(text))

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def _client(
    user: str, room: str, tenant: str = "acme", **kwargs: Any
) -> tuple[ConnectedClient, Sink]:
    sink = Sink()
    member = Member(tenant, user, user, f"s-{user}")
    return ConnectedClient(member, room, sink.send, sink.close, **kwargs), sink


def _delivery(room: str, text: str, tenant: str = "acme", sender: str = "ann") -> Message:
    chat = ChatMessage(IDS.new(), tenant, room, sender, text, dt.datetime.now(dt.UTC))
    return Message(MESSAGE_TYPE, chat.payload(), id=chat.id, routing_key=f"{tenant}.{room}")


async def _drain(*clients: ConnectedClient) -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_first_client_binds_the_room_and_the_last_one_leaving_unbinds_it() -> None:
    binder = RecordingBinder()
    manager = Manager(ChatLayout("ns"), binder)
    ann, _ = _client("ann", "lobby")
    bob, _ = _client("bob", "lobby")
    assert await manager.join(ann) is True
    assert await manager.join(bob) is True
    assert binder.calls == [("want", "acme.lobby")]  # the second join only adds the socket
    manager.leave(ann)
    assert "acme.lobby" in manager.rooms and binder.calls == [("want", "acme.lobby")]
    manager.leave(bob)
    assert manager.rooms == {} and binder.calls[-1] == ("drop", "acme.lobby")


async def test_a_message_reaches_every_socket_of_its_room_including_the_senders_and_no_other() -> (
    None
):
    manager = Manager(ChatLayout("ns"), RecordingBinder())
    clients = {
        name: _client(name, room, tenant)
        for name, room, tenant in [
            ("ann", "lobby", "acme"),
            ("bob", "lobby", "acme"),
            ("cid", "other", "acme"),
            ("dan", "lobby", "globex"),
        ]
    }
    pumps = [asyncio.create_task(c.pump()) for c, _ in clients.values()]
    for client, _ in clients.values():
        await manager.join(client)
    assert manager.dispatch(_delivery("lobby", "hi all", sender="ann")) == 2
    await _drain()
    received = {name: [f["text"] for f in sink.frames] for name, (_, sink) in clients.items()}
    assert received == {"ann": ["hi all"], "bob": ["hi all"], "cid": [], "dan": []}
    for client, _ in clients.values():
        client.disconnect(1000, "bye")
    await asyncio.gather(*pumps)


async def test_a_delivery_for_a_room_no_longer_here_is_counted_stale_and_dropped() -> None:
    manager = Manager(ChatLayout("ns"), RecordingBinder())
    assert manager.dispatch(_delivery("gone", "late")) == 0
    assert manager.stale == 1


async def test_a_client_that_cannot_keep_up_is_disconnected_and_its_room_goes_on() -> None:
    manager = Manager(ChatLayout("ns"), RecordingBinder())
    slow, slow_sink = _client("slow", "lobby", queue_size=3)
    fast, fast_sink = _client("fast", "lobby", queue_size=3)
    slow_sink.gate.clear()  # its socket never drains
    pumps = [asyncio.create_task(slow.pump()), asyncio.create_task(fast.pump())]
    await manager.join(slow)
    await manager.join(fast)
    for i in range(10):
        manager.dispatch(_delivery("lobby", f"m{i}"))
        await _drain()
    assert [f["text"] for f in fast_sink.frames] == [f"m{i}" for i in range(10)]
    assert slow.closed_reason is not None and "too slow" in slow.closed_reason
    slow_sink.gate.set()
    await asyncio.wait_for(pumps[0], 1)
    assert slow_sink.closed == (TOO_SLOW, slow.closed_reason)
    fast.disconnect(1000, "")
    await pumps[1]


async def test_catching_up_sends_missed_messages_in_order_then_held_live_ones_each_once() -> None:
    client, sink = _client("ann", "lobby")
    pump = asyncio.create_task(client.pump())
    client.hold()
    missed = [
        ChatMessage(IDS.new(), "acme", "lobby", "bob", f"old{i}", dt.datetime.now(dt.UTC))
        for i in range(3)
    ]
    live = ChatMessage(IDS.new(), "acme", "lobby", "bob", "live", dt.datetime.now(dt.UTC))
    client.offer(missed[2], "ignored while held")  # also arrived live while catching up
    client.offer(live, "ignored while held")
    assert client.catch_up(missed) == 4
    await _drain()
    assert [f["text"] for f in sink.frames] == ["old0", "old1", "old2", "live"]
    client.disconnect(1000, "")
    await pump


async def test_revoking_a_session_closes_only_that_sessions_sockets() -> None:
    manager = Manager(ChatLayout("ns"), RecordingBinder())
    first, first_sink = _client("ann", "lobby")
    other = ConnectedClient(
        Member("acme", "ann", "ann", "s-other"), "r2", first_sink.send, first_sink.close
    )
    await manager.join(first)
    await manager.join(other)
    assert manager.disconnect_member("acme", "ann", "revoked", session_id="s-ann") == 1
    assert first.closed_reason == "revoked" and other.closed_reason is None
    assert manager.disconnect_member("acme", "ann", "revoked") == 2
    pump = asyncio.create_task(first.pump())
    await pump
    assert first_sink.closed == (REVOKED, "revoked")
