"""Manager, VirtualRoom and ConnectedClient on a recording binder (no broker): the seed's room
life cycle, fan-out to every socket including the sender's, slow clients, catching up."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
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
        self.refuse = False  # True: bindings never come (the broker is away)
        self.dropped = asyncio.Event()

    def want(self, key: str) -> None:
        self.wanted.add(key)
        self.calls.append(("want", key))

    def drop(self, key: str) -> None:
        self.wanted.discard(key)
        self.calls.append(("drop", key))
        self.dropped.set()

    async def bound(self, key: str, timeout: float) -> bool:
        return key in self.wanted and not self.refuse


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


async def _pages(*pages: list[ChatMessage]) -> AsyncIterator[list[ChatMessage]]:
    for page in pages:
        yield page


def _message(text: str) -> ChatMessage:
    return ChatMessage(IDS.new(), "acme", "lobby", "bob", text, dt.datetime.now(dt.UTC))


async def test_catching_up_sends_missed_messages_in_order_then_held_live_ones_each_once() -> None:
    client, sink = _client("ann", "lobby")
    pump = asyncio.create_task(client.pump())
    client.hold()
    missed = [_message(f"old{i}") for i in range(3)]
    live = _message("live")
    client.offer(missed[2], "ignored while held")  # also arrived live while catching up
    client.offer(live, "ignored while held")
    assert await client.replay(_pages(missed[:2], missed[1:])) == 4
    await _drain()
    assert [f["text"] for f in sink.frames] == ["old0", "old1", "old2", "live"]
    assert not client.holding
    client.offer(_message("after"), '{"text": "after"}')  # live again, straight to the queue
    await _drain()
    assert [f["text"] for f in sink.frames][-1] == "after"
    client.disconnect(1000, "")
    await pump


async def test_a_gap_of_thirty_thousand_messages_goes_through_the_bounded_queue_in_order() -> None:
    client, sink = _client("ann", "lobby", queue_size=256)
    client.hold()
    missed = [_message(f"m{i}") for i in range(30_000)]
    pages = [missed[i : i + 500] for i in range(0, len(missed), 500)]
    replay = asyncio.create_task(client.replay(_pages(*pages)))
    await _drain()
    # Back-pressure: with nobody writing to the socket the replay waits at a full queue,
    # and that is no reason to close the client as too slow.
    assert not replay.done() and client.closed_reason is None
    live = [_message(f"live{i}") for i in range(50)]
    for message in live:
        assert client.offer(message, "held")
    pump = asyncio.create_task(client.pump())
    assert await replay == 30_050
    await _drain()
    assert [f["text"] for f in sink.frames] == [m.text for m in missed + live]
    client.disconnect(1000, "")
    await pump


async def test_a_replay_stops_when_its_client_goes_away() -> None:
    client, sink = _client("ann", "lobby", queue_size=4)
    client.hold()
    replay = asyncio.create_task(client.replay(_pages([_message(f"m{i}") for i in range(100)])))
    await _drain()
    client.disconnect(1000, "bye")
    pump = asyncio.create_task(client.pump())
    assert await asyncio.wait_for(replay, 5) < 100
    await pump
    assert sink.closed == (1000, "bye")


async def test_a_join_whose_binding_does_not_come_is_refused_and_leaves_no_trace() -> None:
    binder = RecordingBinder()
    binder.refuse = True
    manager = Manager(ChatLayout("ns"), binder)
    ann, _ = _client("ann", "lobby")
    assert await manager.join(ann) is False
    assert manager.rooms == {} and manager.clients() == 0
    assert binder.calls == [("want", "acme.lobby"), ("drop", "acme.lobby")]
    assert manager.disconnect_member("acme", "ann", "revoked") == 0


async def test_a_room_left_and_joined_again_within_the_grace_period_keeps_its_binding() -> None:
    binder = RecordingBinder()
    manager = Manager(ChatLayout("ns"), binder, unbind_grace=0.05)
    ann, _ = _client("ann", "lobby")
    await manager.join(ann)
    for _ in range(5):  # a page reloading: leave, join again
        manager.leave(ann)
        assert manager.lingering == {"acme.lobby"}
        ann, _ = _client("ann", "lobby")
        assert await manager.join(ann) is True
    assert binder.calls == [("want", "acme.lobby")]
    manager.leave(ann)
    await asyncio.wait_for(binder.dropped.wait(), 5)
    assert not manager.lingering
    assert binder.calls == [("want", "acme.lobby"), ("drop", "acme.lobby")]
    assert binder.wanted == set()


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


async def test_a_message_that_reaches_a_room_twice_goes_to_its_sockets_once() -> None:
    # (a catch-up from the history and then the broker, or a publish both routed and relayed
    # from the outbox)
    manager = Manager(ChatLayout("ns"), RecordingBinder())
    client, sink = _client("ann", "lobby")
    pump = asyncio.create_task(client.pump())
    await manager.join(client)
    first, second = _delivery("lobby", "one"), _delivery("lobby", "two")
    assert [manager.dispatch(m) for m in (first, second, first)] == [1, 1, 0]
    await _drain()
    assert [f["text"] for f in sink.frames] == ["one", "two"]
    client.disconnect(1000, "bye")
    await pump
