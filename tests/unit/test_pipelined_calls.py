"""Pipelined calls (``RpcProtocol.call_all``) against a scripted broker, and the pure half of
``rabbitry.amqp.pipeline``: the declaring order, the methods, the errors naming an object."""

from __future__ import annotations

import asyncio

import pytest
from pamqp import commands

from rabbitry.amqp.base import Interrupted
from rabbitry.amqp.pipeline import declarations, describe, method_of
from rabbitry.amqp.spec import Binding, Exchange, ExchangeType, Queue, Topology
from scripted_broker import feed, open_link, turns


def declare(name: str) -> commands.Queue.Declare:
    return commands.Queue.Declare(queue=name)


def ok(name: str) -> commands.Queue.DeclareOk:
    return commands.Queue.DeclareOk(queue=name, message_count=0, consumer_count=0)


async def test_a_window_is_sent_in_one_write_and_the_next_call_goes_as_a_reply_comes() -> None:
    link, transport = await open_link()
    run = asyncio.ensure_future(link.call_all([declare(f"q{n}") for n in range(5)], window=3))
    await turns()
    assert len(transport.writes) == 1  # the window, back to back
    assert [f.queue for f in transport.frames()] == ["q0", "q1", "q2"]
    feed(link, 1, ok("q0"))
    await turns(5)  # the reply wakes the caller (through the shield), which sends the next
    assert [f.queue for f in transport.frames()] == ["q3"]
    feed(link, 1, ok("q1"), ok("q2"), ok("q3"))
    await turns(5)
    assert [f.queue for f in transport.frames()] == ["q4"]  # never more than 3 unanswered
    feed(link, 1, ok("q4"))
    replies = await run
    assert [r.queue for r in replies] == ["q0", "q1", "q2", "q3", "q4"]


async def test_the_broker_closing_the_channel_over_a_call_names_that_call() -> None:
    link, _ = await open_link()
    run = asyncio.ensure_future(link.call_all([declare(f"q{n}") for n in range(4)], window=10))
    await turns()
    close = commands.Channel.Close(406, "PRECONDITION_FAILED - inequivalent arg", 50, 10)
    feed(link, 1, ok("q0"), close)
    with pytest.raises(Interrupted) as caught:
        await run
    assert (caught.value.done, caught.value.refused, caught.value.reply_code) == (1, True, 406)


async def test_a_connection_lost_mid_window_is_no_refusal_but_says_what_went_through() -> None:
    link, _ = await open_link()
    run = asyncio.ensure_future(link.call_all([declare(f"q{n}") for n in range(4)], window=10))
    await turns()
    feed(link, 1, ok("q0"), ok("q1"))
    link.connection_lost(ConnectionResetError("reset"))
    with pytest.raises(Interrupted) as caught:
        await run
    assert (caught.value.done, caught.value.refused) == (2, False)


async def test_the_rpc_timeout_bounds_the_silence_between_replies_not_the_whole_window() -> None:
    link, transport = await open_link(rpc_timeout=0.3)
    names = [f"q{n}" for n in range(4)]
    run = asyncio.ensure_future(link.call_all([declare(n) for n in names], window=10))
    # A reply every 0.2 s: the last comes 0.8 s after the window went, past 0.3 s from its
    # send, yet the broker never fell silent for 0.3 s.
    for name in names:
        await asyncio.sleep(0.2)
        feed(link, 1, ok(name))
    assert [r.queue for r in await run] == names
    assert not transport.aborted


async def test_a_broker_silent_for_the_rpc_timeout_closes_the_link() -> None:
    link, transport = await open_link(rpc_timeout=0.2)
    run = asyncio.ensure_future(link.call_all([declare("q0"), declare("q1")], window=10))
    await turns()
    feed(link, 1, ok("q0"))
    with pytest.raises(Interrupted, match=r"no reply to Queue\.Declare within 0\.2s") as caught:
        await run
    assert (caught.value.done, caught.value.refused) == (1, False)
    assert transport.aborted


def test_a_topology_is_declared_exchanges_then_queues_then_bindings() -> None:
    topology = Topology.of(
        exchanges=[Exchange("x", ExchangeType.DIRECT)],
        queues=[Queue("b"), Queue("a", arguments=(("x-single-active-consumer", True),))],
        bindings=[Binding("x", "a", "k")],
    )
    ordered = declarations(topology)
    assert [describe(d) for d in ordered] == [
        "exchange x",
        "queue a",
        "queue b",
        "binding of queue a to x (key 'k')",
    ]
    queue = method_of(ordered[1])
    assert isinstance(queue, commands.Queue.Declare)
    assert queue.arguments == {"x-single-active-consumer": True}
    assert queue.durable
    exchange = method_of(ordered[0])
    assert isinstance(exchange, commands.Exchange.Declare)
    assert exchange.exchange_type == "direct"
