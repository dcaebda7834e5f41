"""Link's pure parts: confirm windows, return matching, folded acks, the handshake answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pamqp import commands
from pamqp import frame as pamqp_frame

from rabbitry.amqp import handshake, wire
from rabbitry.amqp.confirms import Confirms, Outgoing, PublishOutcome
from rabbitry.amqp.properties import Properties, encode_properties
from rabbitry.amqp.settles import AckFolder

ACKED, NACKED, RETURNED = PublishOutcome.ACKED, PublishOutcome.NACKED, PublishOutcome.RETURNED
NO_PROPERTIES = encode_properties(Properties())  # a return's property list, as received


def _batch(count: int, routing_key: str = "q") -> list[Outgoing]:
    return [Outgoing("", routing_key, f"m{i}".encode()) for i in range(count)]


async def test_one_multiple_ack_settles_several_windows() -> None:
    loop = asyncio.get_running_loop()
    confirms = Confirms()
    first: asyncio.Future[Any] = loop.create_future()
    second: asyncio.Future[Any] = loop.create_future()
    single: asyncio.Future[Any] = loop.create_future()
    confirms.add(_batch(3), first, single=False)
    confirms.add(_batch(2), second, single=False)
    confirms.add(_batch(1), single, single=True)
    confirms.settle(4, multiple=True, outcome=ACKED)
    assert first.result() == [ACKED] * 3
    assert not second.done()
    confirms.settle(5, multiple=False, outcome=NACKED)
    assert second.result() == [ACKED, NACKED]
    confirms.settle(6, multiple=False, outcome=ACKED)
    assert single.result() is ACKED
    assert confirms.pending == 0


async def test_single_acks_out_of_order() -> None:
    confirms = Confirms()
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    confirms.add(_batch(3), future, single=False)
    for tag in (3, 1, 2):
        confirms.settle(tag, multiple=False, outcome=NACKED if tag == 1 else ACKED)
    assert future.result() == [NACKED, ACKED, ACKED]


async def test_return_marks_the_matching_message_before_its_ack() -> None:
    confirms = Confirms()
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    items = [*_batch(2, "bound"), Outgoing("", "unbound", b"m2"), *_batch(1, "bound")]
    confirms.add(items, future, single=False)
    assert confirms.returned("", "unbound", b"m2", NO_PROPERTIES)
    confirms.settle(4, multiple=True, outcome=ACKED)
    assert future.result() == [ACKED, ACKED, RETURNED, ACKED]


async def test_returns_of_identical_messages_match_in_publish_order() -> None:
    confirms = Confirms()
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    same = Outgoing("", "unbound", b"same", Properties(message_id="a"))
    confirms.add([same, same, Outgoing("", "unbound", b"same", mandatory=False)], future, False)
    properties = encode_properties(Properties(message_id="a"))
    assert confirms.returned("", "unbound", b"same", properties)
    assert confirms.returned("", "unbound", b"same", properties)
    # not mandatory: never returned
    assert not confirms.returned("", "unbound", b"same", NO_PROPERTIES)
    confirms.settle(3, multiple=True, outcome=ACKED)
    assert future.result() == [RETURNED, RETURNED, ACKED]


async def test_fail_fails_every_pending_window() -> None:
    confirms = Confirms()
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    confirms.add(_batch(2), future, single=False)
    confirms.fail(RuntimeError("gone"))
    with pytest.raises(RuntimeError, match="gone"):
        future.result()


def test_consecutive_acks_fold_into_one_multiple_ack() -> None:
    acks = AckFolder(1)
    assert [acks.ack(tag) for tag in (1, 2, 3)] == [None, None, None]
    assert acks.take_run() == wire.encode_ack(1, 3, multiple=True)
    assert acks.take_run() is None


def test_an_ack_above_a_gap_goes_alone_and_the_gap_fills_later() -> None:
    acks = AckFolder(1)
    assert acks.ack(2) == wire.encode_ack(1, 2)  # 1 is still unsettled: no multiple may cover it
    acks.settled(1)  # e.g. a nack frame queued for 1
    assert acks.ack(3) is None  # 1 and 2 are settled, so a multiple ack of 3 is exact
    assert acks.take_run() == wire.encode_ack(1, 3, multiple=True)


def test_a_callers_multiple_ack_is_kept() -> None:
    acks = AckFolder(1)
    assert acks.ack(5, multiple=True) is None
    assert acks.ack(6) is None
    assert acks.take_run() == wire.encode_ack(1, 6, multiple=True)


def test_url_parsing_and_plain_auth() -> None:
    endpoint = handshake.Endpoint.from_url("amqp://us%40er:p%2Fw@broker:5673/my%2Fvhost")
    assert (endpoint.host, endpoint.port, endpoint.user) == ("broker", 5673, "us@er")
    assert (endpoint.password, endpoint.vhost) == ("p/w", "my/vhost")
    assert "p/w" not in repr(endpoint)
    assert handshake.Endpoint.from_url("amqp://localhost").vhost == "/"
    with pytest.raises(ValueError, match="scheme"):
        handshake.Endpoint.from_url("http://localhost")
    frame = handshake.start_ok(
        commands.Connection.Start(mechanisms="AMQPLAIN PLAIN"), endpoint, "n"
    )
    _, _, start_ok = pamqp_frame.unmarshal(frame)
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert start_ok.response == "\0us@er\0p/w"
    assert start_ok.client_properties["connection_name"] == "n"
    with pytest.raises(ValueError, match="PLAIN"):  # the URL asks for PLAIN
        handshake.start_ok(commands.Connection.Start(mechanisms="EXTERNAL"), endpoint, "n")


@pytest.mark.parametrize(
    ("ours", "theirs", "agreed"), [(30, 60, 30), (60, 30, 30), (30, 0, 30), (0, 60, 0)]
)
def test_heartbeat_negotiation(ours: int, theirs: int, agreed: int) -> None:
    endpoint = handshake.Endpoint.from_url("amqp://localhost/")
    tune = commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=theirs)
    frames, frame_max, heartbeat = handshake.tune_ok(tune, endpoint, ours)
    assert (frame_max, heartbeat) == (131072, agreed)
    used, _, tune_ok = pamqp_frame.unmarshal(frames)
    assert isinstance(tune_ok, commands.Connection.TuneOk)
    assert (tune_ok.channel_max, tune_ok.heartbeat) == (2047, agreed)
    _, _, open_ = pamqp_frame.unmarshal(frames[used:])
    assert isinstance(open_, commands.Connection.Open)
