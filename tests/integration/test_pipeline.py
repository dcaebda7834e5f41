"""Pipelined calls on the wire client against the real broker: windows of declarations sent
back to back, replies matched in order; a refusal in the middle of a window is named, and what
came after it is declared on a new link (``rabbitry.amqp.pipeline``)."""

from __future__ import annotations

import contextlib

import pytest
from pamqp import commands

from helpers import AMQP_URL
from rabbitry.amqp.base import Interrupted, LinkClosed
from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link
from rabbitry.amqp.pipeline import Pipeline
from rabbitry.errors import ConfigError, NotFound
from rabbitry.messaging.topology import Binding, Exchange, ExchangeType, Queue, Topology

CLASH = (("x-max-length", 5),)


def tenant(namespace: str, n: int) -> Topology:
    """A queue bound to ``<ns>.direct`` and its dead-letter queue: one group."""
    exchange = Exchange(f"{namespace}.direct", ExchangeType.DIRECT)
    queue = f"{namespace}.q{n}"
    return Topology.of(
        exchanges=[exchange],
        queues=[Queue(queue), Queue(f"{queue}.dlq")],
        bindings=[Binding(exchange.name, queue, f"k{n}")],
    )


async def exists(declarer: Declarer, queue: str) -> bool:
    try:
        await declarer.queue_status(queue)
    except NotFound:
        return False
    return True


async def test_replies_of_a_pipelined_window_come_back_in_call_order(
    namespace: str, declarer: Declarer
) -> None:
    link = await Link.connect(AMQP_URL, name=f"{namespace}-pipe")
    try:
        names = [f"{namespace}.p{n}" for n in range(25)]
        methods = [commands.Queue.Declare(queue=name) for name in names]
        replies = await link.call_all(methods, window=4)
        assert [reply.queue for reply in replies] == names
    finally:
        await link.close()


async def test_a_refused_call_in_a_window_says_how_many_went_through(
    namespace: str, declarer: Declarer
) -> None:
    clash = f"{namespace}.clash"
    await declarer.declare(Topology.of(queues=[Queue(clash, arguments=CLASH)]))
    before, after = f"{namespace}.before", f"{namespace}.after"
    link = await Link.connect(AMQP_URL, name=f"{namespace}-pipe")
    try:
        methods = [
            commands.Queue.Declare(queue=before),
            commands.Queue.Declare(queue=clash, durable=True),  # no x-max-length: 406
            commands.Queue.Declare(queue=after),
        ]
        with pytest.raises(Interrupted) as caught:
            await link.call_all(methods, window=10)
        assert (caught.value.done, caught.value.refused, caught.value.reply_code) == (1, True, 406)
        assert not link.is_open  # one channel: the refusal takes the link with it
    finally:
        with contextlib.suppress(LinkClosed):  # closed by the broker, as it should be
            await link.close()
    assert await exists(declarer, before)
    assert not await exists(declarer, after)  # dropped unread by the broker


async def test_groups_declared_in_small_windows_all_exist_with_their_bindings(
    namespace: str, declarer: Declarer
) -> None:
    groups = [tenant(namespace, n) for n in range(30)]
    done: list[int] = []
    async with Pipeline(AMQP_URL, name=namespace, window=7) as pipeline:
        refused = await pipeline.declare_groups(groups, done.append)
    assert refused == {}
    assert sorted(done) == list(range(30))
    for n in (0, 17, 29):
        assert await exists(declarer, f"{namespace}.q{n}")
        assert await exists(declarer, f"{namespace}.q{n}.dlq")
    # Declaring the same queues through aio-pika afterwards is no mismatch (integer widths).
    await declarer.declare(groups[3])


async def test_a_refusal_mid_window_names_its_queue_and_the_groups_after_it_are_declared(
    namespace: str, declarer: Declarer
) -> None:
    groups = [tenant(namespace, n) for n in range(12)]
    clash = f"{namespace}.q5"
    await declarer.declare(Topology.of(queues=[Queue(clash, arguments=CLASH)]))
    done: list[int] = []
    async with Pipeline(AMQP_URL, name=namespace, window=100) as pipeline:
        refused = await pipeline.declare_groups(groups, done.append)
    assert list(refused) == [5]
    assert isinstance(refused[5], ConfigError)
    assert f"queue {clash}:" in str(refused[5])
    assert "406" in str(refused[5])
    assert sorted(done) == [n for n in range(12) if n != 5]
    for n in range(12):
        if n != 5:
            assert await exists(declarer, f"{namespace}.q{n}")
            assert await exists(declarer, f"{namespace}.q{n}.dlq")


async def test_a_binding_to_a_missing_exchange_is_named_and_the_rest_declared(
    namespace: str, declarer: Declarer
) -> None:
    queue = f"{namespace}.orphan"
    orphan = Topology.of(
        queues=[Queue(queue)], bindings=[Binding(f"{namespace}.nowhere", queue, "k")]
    )
    async with Pipeline(AMQP_URL, name=namespace) as pipeline:
        refused = await pipeline.declare_groups([orphan, tenant(namespace, 1)])
        assert list(refused) == [0]
        assert isinstance(refused[0], NotFound)
        assert f"binding of queue {queue} to {namespace}.nowhere" in str(refused[0])
        with pytest.raises(ConfigError, match=f"queue {namespace}.q1:"):
            await pipeline.declare(Topology.of(queues=[Queue(f"{namespace}.q1", arguments=CLASH)]))
    assert await exists(declarer, f"{namespace}.q1")
