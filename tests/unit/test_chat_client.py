"""A socket's pump: one message a frame, or, for a client that asked for lines, what waits in
its send queue in one frame, one JSON object a line, each message once and in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import replace

from rabbitry.chat.client import LINES, ConnectedClient, Member
from rabbitry.chat.protocol import ChatMessage, encode_frame


def _message(n: int) -> ChatMessage:
    return ChatMessage(
        id=f"00000000-0000-7000-8000-{n:012d}",
        tenant="acme",
        room="lobby",
        sender="ann",
        text=f"m{n}\nwith a newline",  # (escaped in the JSON: a line stays one message)
        sent_at=dt.datetime(2026, 12, 4, tzinfo=dt.UTC),
    )


async def _pumped(lines: bool, count: int) -> tuple[list[str], list[int]]:
    sent: list[str] = []
    closed: list[int] = []
    everything = asyncio.Event()

    async def send(frame: str) -> None:
        sent.append(frame)
        if sum(len(frame.split("\n")) for frame in sent) >= count:
            everything.set()

    async def close(code: int, reason: str) -> None:
        closed.append(code)

    member = Member("acme", "1", "ann", "s1")
    client = ConnectedClient(member, "lobby", send, close, queue_size=1000, lines=lines)
    for n in range(count):  # all queued before the pump first runs: the socket fell behind
        message = _message(n)
        assert client.offer(message, encode_frame(message.frame()))
    pump = asyncio.create_task(client.pump())
    await asyncio.wait_for(everything.wait(), 5)
    client.disconnect(1000, "")
    await pump
    return sent, closed


async def test_a_client_without_lines_gets_one_message_a_frame() -> None:
    sent, closed = await _pumped(lines=False, count=5)
    assert [json.loads(frame)["text"] for frame in sent] == [
        f"m{n}\nwith a newline" for n in range(5)
    ]
    assert closed == [1000]


async def test_a_client_with_lines_gets_what_waits_in_one_frame_up_to_the_limit() -> None:
    count = LINES + 8
    sent, closed = await _pumped(lines=True, count=count)
    # What waited, at most LINES a frame.
    assert [len(frame.split("\n")) for frame in sent] == [LINES, 8]
    texts = [json.loads(line)["text"] for frame in sent for line in frame.split("\n")]
    assert texts == [f"m{n}\nwith a newline" for n in range(count)]
    assert closed == [1000]


async def _empty() -> AsyncIterator[list[ChatMessage]]:
    nothing: list[list[ChatMessage]] = []
    for page in nothing:
        yield page


async def _replayed(
    held: list[ChatMessage], tail: list[ChatMessage] | None = None
) -> tuple[ConnectedClient, list[str]]:
    """A holding client offered ``held``, then replayed (nothing from pages, then ``tail``):
    the client and the texts its socket got, in order."""
    sent: list[str] = []
    everything = asyncio.Event()
    count = len(held) + len(tail or [])

    async def send(frame: str) -> None:
        sent.append(frame)
        if len(sent) == count:
            everything.set()

    async def close(code: int, reason: str) -> None:
        pass

    client = ConnectedClient(Member("acme", "1", "ann", "s1"), "lobby", send, close)
    client.hold()
    for message in held:
        assert client.offer(message, encode_frame(message.frame()))
    pump = asyncio.create_task(client.pump())
    assert await client.replay(_empty(), tail or []) == count
    assert not client.holding
    await asyncio.wait_for(everything.wait(), 5)
    client.disconnect(1000, "")
    await pump
    return client, [json.loads(frame)["text"] for frame in sent]


BOB = replace(_message(5), sender="bob", text="from bob")


async def test_held_messages_are_replayed_each_senders_in_the_order_sent() -> None:
    # A gateway's own message that waited for its copy back from the new queue reaches the
    # held list after its sender's next one (held at its confirm): the replay puts it first,
    # and leaves the other senders' messages where they came.
    held = [_message(2), BOB, _message(1), _message(3)]
    client = ConnectedClient(Member("acme", "1", "ann", "s1"), "lobby", _ignore, _ignore)
    client.hold()
    for message in held:
        client.offer(message, encode_frame(message.frame()))
    assert client.seams == {_message(2).id, BOB.id}
    _, texts = await _replayed(held)
    assert texts == ["m1\nwith a newline", "from bob", "m2\nwith a newline", "m3\nwith a newline"]


async def test_a_held_message_goes_before_a_later_one_of_its_sender_in_the_tail() -> None:
    # The gateway's queue was lost twice in a row: the first new queue delivered m1 (held),
    # the second loss took m2, which the catch-up found in the history (its tail).
    _, texts = await _replayed([_message(1)], [_message(2), BOB])
    assert texts == ["m1\nwith a newline", "from bob", "m2\nwith a newline"]


async def _ignore(*_: object) -> None:
    pass
