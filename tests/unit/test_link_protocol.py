"""Link as an asyncio.Protocol against a scripted broker: what it writes, and when.

The broker's side is pamqp-marshalled frames fed to ``data_received``; the transport records
writes. This pins the hot-path promises no real broker can show: one write per loop turn,
nothing written while the transport is paused, acks folded, heartbeats sent and checked.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from pamqp import base, commands, header
from pamqp import body as pamqp_body
from pamqp import frame as pamqp_frame

from helpers import eventually_true
from rabbitry.amqp import wire
from rabbitry.amqp.link import Link, LinkClosed, Outgoing, PublishOutcome, Received
from rabbitry.amqp.properties import Properties
from scripted_broker import Transport, feed, open_link, turns

PROPS = Properties(delivery_mode=2)


def deliveries(first: int, count: int, body: bytes = b"body", frame_max: int = 131072) -> bytes:
    chunks: list[bytes] = []
    for tag in range(first, first + count):
        chunks.append(pamqp_frame.marshal(commands.Basic.Deliver("ctag", tag, False, "", "q"), 1))
        content = header.ContentHeader(0, len(body), commands.Basic.Properties(delivery_mode=2))
        chunks.append(pamqp_frame.marshal(content, 1))
        step = frame_max - wire.FRAME_OVERHEAD
        for start in range(0, len(body), step):
            piece = pamqp_body.ContentBody(body[start : start + step])
            chunks.append(pamqp_frame.marshal(piece, 1))
    return b"".join(chunks)


async def reply(link: Link, transport: Transport, method: base.Frame) -> None:
    """Answer the method the running call is about to write (a turn to start, one to flush)."""
    await turns()
    transport.frames()
    feed(link, 1, method)


@pytest.fixture
async def opened() -> AsyncIterator[tuple[Link, Transport]]:
    link, transport = await open_link()
    yield link, transport
    link.connection_lost(None)


async def test_publishes_of_one_turn_leave_in_one_write(opened: tuple[Link, Transport]) -> None:
    link, transport = opened
    futures = [link.publish("", "q", b"m%d" % i, PROPS) for i in range(100)]
    assert not transport.writes
    await turns(1)
    assert len(transport.writes) == 1
    frames = transport.frames()
    assert len(frames) == 300
    assert [f.value for f in frames[2::3]] == [b"m%d" % i for i in range(100)]
    feed(link, 1, commands.Basic.Ack(60, multiple=True), commands.Basic.Nack(61))
    feed(link, 1, commands.Basic.Ack(100, multiple=True))
    outcomes = [f.result() for f in futures]
    assert (
        outcomes
        == [PublishOutcome.ACKED] * 60 + [PublishOutcome.NACKED] + [PublishOutcome.ACKED] * 39
    )


async def test_publish_many_writes_once_and_resolves_once(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    batch = asyncio.ensure_future(link.publish_many([Outgoing("", "q", b"x")] * 1000))
    await turns(1)
    assert len(transport.writes) == 1
    assert len(transport.frames()) == 3000
    feed(link, 1, commands.Basic.Ack(1000, multiple=True))
    assert await batch == [PublishOutcome.ACKED] * 1000


async def test_nothing_is_written_while_the_transport_is_paused(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    link.pause_writing()
    single = link.publish("", "q", b"one", PROPS)
    batch = asyncio.ensure_future(link.publish_many([Outgoing("", "q", b"two")]))
    await turns(1)
    await turns(1)
    assert not transport.writes
    assert not batch.done()
    link.resume_writing()
    await turns(1)
    await turns(1)
    bodies = [f.value for f in transport.frames() if isinstance(f, pamqp_body.ContentBody)]
    assert bodies == [b"one", b"two"]
    feed(link, 1, commands.Basic.Ack(2, multiple=True))
    assert await single is PublishOutcome.ACKED
    assert await batch == [PublishOutcome.ACKED]


async def test_acks_of_one_read_fold_into_one_frame(opened: tuple[Link, Transport]) -> None:
    link, transport = opened
    got: list[Received] = []

    def on_delivery(delivery: Received) -> None:
        got.append(delivery)
        link.ack(delivery.delivery_tag)

    consume = asyncio.ensure_future(link.consume("q", on_delivery))
    await reply(link, transport, commands.Basic.ConsumeOk("ctag"))
    assert await consume == "ctag"
    link.data_received(deliveries(1, 50))
    await turns(1)
    assert transport.writes == [wire.encode_ack(1, 50, multiple=True)]
    assert [d.delivery_tag for d in got] == list(range(1, 51))
    assert got[0].properties.delivery_mode == 2


async def test_deliveries_split_anywhere_and_over_frames_are_reassembled() -> None:
    link, transport = await open_link(frame_max=4096)
    got: list[Received] = []
    consume = asyncio.ensure_future(link.consume("q", got.append))
    await reply(link, transport, commands.Basic.ConsumeOk("ctag"))
    await consume
    body = bytes(range(256)) * 40
    stream = deliveries(1, 3, body, frame_max=4096)
    for start in range(0, len(stream), 997):
        link.data_received(stream[start : start + 997])
    assert [d.body for d in got] == [body] * 3
    link.connection_lost(None)


async def test_a_raising_callback_does_not_take_the_link_down(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened

    def on_delivery(delivery: Received) -> None:
        raise RuntimeError("handler bug")

    consume = asyncio.ensure_future(link.consume("q", on_delivery))
    await reply(link, transport, commands.Basic.ConsumeOk("ctag"))
    await consume
    link.data_received(deliveries(1, 2))
    assert link.is_open


async def test_connection_loss_fails_everything_pending(opened: tuple[Link, Transport]) -> None:
    link, _ = opened
    single = link.publish("", "q", b"x", PROPS)
    batch = asyncio.ensure_future(link.publish_many([Outgoing("", "q", b"y")]))
    await turns(1)
    link.connection_lost(ConnectionResetError("reset by peer"))
    for pending in (single, batch):
        with pytest.raises(LinkClosed, match="reset by peer"):
            await pending
    with pytest.raises(LinkClosed):
        await link.closed
    assert not link.is_open
    with pytest.raises(LinkClosed):
        link.ack(1)


async def test_channel_close_from_the_broker_carries_its_code(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    pending = link.publish("missing", "q", b"x", PROPS)
    await turns(1)
    transport.frames()
    feed(link, 1, commands.Channel.Close(404, "NOT_FOUND - no exchange 'missing'", 60, 40))
    with pytest.raises(LinkClosed) as failed:
        await pending
    assert (failed.value.reply_code, failed.value.reply_text) == (
        404,
        "NOT_FOUND - no exchange 'missing'",
    )
    assert [type(f) for f in transport.frames()] == [
        commands.Channel.CloseOk,
        commands.Connection.Close,
    ]
    assert not link.is_open
    feed(link, 0, commands.Connection.CloseOk())
    assert transport.closing
    link.connection_lost(None)
    with pytest.raises(LinkClosed) as closed:
        await link.closed
    assert closed.value.reply_code == 404


async def test_close_sends_pending_acks_then_closes_cleanly(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    got: list[Received] = []
    consume = asyncio.ensure_future(link.consume("q", got.append))
    await reply(link, transport, commands.Basic.ConsumeOk("ctag"))
    await consume
    link.data_received(deliveries(1, 1))
    link.ack(got[0].delivery_tag)
    closing = asyncio.ensure_future(link.close())
    await turns(1)
    frames = transport.frames()
    assert isinstance(frames[0], commands.Basic.Ack)
    assert isinstance(frames[-1], commands.Connection.Close)
    feed(link, 0, commands.Connection.CloseOk())
    link.connection_lost(None)
    await closing
    assert link.closed.result() is None


def heartbeats_sent(transport: Transport, count: int) -> bool:
    return transport.writes.count(wire.HEARTBEAT) >= count


def holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


async def test_heartbeats_are_sent_when_idle_and_a_silent_broker_is_dropped() -> None:
    link, transport = await open_link(heartbeat=1)  # checked every 0.5 s
    # Idle, it sends heartbeats; while the broker answers each with its own, it stays open,
    # however many intervals go by (counted in heartbeats, not in seconds).
    for count in range(1, 6):
        sent = holds(functools.partial(heartbeats_sent, transport, count))
        await eventually_true(sent, timeout=30, what="a heartbeat")
        assert link.is_open and not transport.closing
        link.data_received(wire.HEARTBEAT)
    assert set(transport.writes) == {wire.HEARTBEAT}  # idle: nothing else was written
    # The broker falls silent: after two silent intervals the link gives up on it.
    dropped = holds(lambda: transport.closing)
    await eventually_true(dropped, timeout=30, what="the silent broker to be dropped")
    assert transport.writes.count(wire.HEARTBEAT) >= 5 + 3  # it kept trying meanwhile
    link.connection_lost(None)
    with pytest.raises(LinkClosed, match="missed heartbeats from the broker"):
        await link.closed


# --- control methods ---------------------------------------------------------------------------


async def test_the_broker_asking_for_flow_is_answered_and_the_link_stays_open(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    feed(link, 1, commands.Channel.Flow(active=False))
    await turns(1)
    (answer,) = transport.frames()
    assert isinstance(answer, commands.Channel.FlowOk) and answer.active is False
    assert link.is_open


async def test_a_control_method_the_link_has_no_use_for_is_ignored(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    feed(link, 1, commands.Basic.RecoverOk())
    await turns(1)
    assert transport.frames() == []
    assert link.is_open


async def test_a_reply_to_no_call_is_a_frame_error_that_closes_the_link(
    opened: tuple[Link, Transport],
) -> None:
    link, transport = opened
    feed(link, 1, commands.Basic.QosOk())
    (close,) = transport.frames()
    assert isinstance(close, commands.Connection.Close) and close.reply_code == 501
    assert "unexpected Basic.QosOk" in close.reply_text
    assert not link.is_open
    assert link.error is not None and link.error.reply_code == 501
