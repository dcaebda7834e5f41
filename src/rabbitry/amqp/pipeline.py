"""Declaring topology in pipelined windows over the wire client.

A DISPATCH replica serving 2,000 tenants declares 8,000 queues and bindings when it starts.
One call at a time (aio-pika's channel waits for each reply before the next call) that was a
round trip each: 6 s on a quiet machine for objects that all existed, minutes on a loaded one.
:class:`Pipeline` sends them back to back on one :class:`~rabbitry.amqp.link.Link`, a window
of calls in flight (:meth:`~rabbitry.amqp.calls.RpcProtocol.call_all`), and collects the
replies, which the broker sends in call order.

A refusal (406 PRECONDITION_FAILED: the queue exists with other arguments) closes the channel
and drops every call after it unread. The replies counted so far say which call it was, so the
error names its queue, exchange or binding; the link is opened again and what came after it
is declared, minus the group (a tenant's queues, say) the refused object belongs to.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

from pamqp import base, commands

from rabbitry.amqp.base import Interrupted, LinkError
from rabbitry.amqp.link import Link
from rabbitry.amqp.spec import Binding, Exchange, Queue, Topology
from rabbitry.errors import BrokerError, BrokerUnavailable, ConfigError, NotFound, RabbitryError

log = logging.getLogger(__name__)

Declaration = Exchange | Queue | Binding

WINDOW = 100
"""Calls in flight at once. The RPC timeout bounds the broker's silence between two replies,
not a window, so a larger window does not risk the timeout; it only holds more unanswered
calls in the broker's channel when something goes wrong."""

_NOT_FOUND, _PRECONDITION_FAILED = 404, 406


def declarations(topology: Topology) -> list[Declaration]:
    """``topology`` in declaring order: exchanges, queues, then bindings (what a binding names
    exists before it), each sorted by name."""
    exchanges = sorted(topology.exchanges, key=lambda e: e.name)
    queues = sorted(topology.queues, key=lambda q: q.name)
    bindings = sorted(topology.bindings, key=lambda b: (b.queue, b.exchange, b.routing_key))
    return [*exchanges, *queues, *bindings]


def method_of(declaration: Declaration) -> base.Frame:
    """The AMQP method that declares ``declaration``."""
    if isinstance(declaration, Exchange):
        return commands.Exchange.Declare(
            exchange=declaration.name,
            exchange_type=declaration.type.value,
            durable=declaration.durable,
            auto_delete=declaration.auto_delete,
        )
    if isinstance(declaration, Queue):
        return commands.Queue.Declare(
            queue=declaration.name,
            durable=declaration.durable,
            exclusive=declaration.exclusive,
            auto_delete=declaration.auto_delete,
            # Integers of any width compare equal on RabbitMQ: a queue aio-pika declared with
            # x-message-ttl as a long is the same queue declared here with a long-long.
            arguments=dict(declaration.arguments),
        )
    return commands.Queue.Bind(
        queue=declaration.queue, exchange=declaration.exchange, routing_key=declaration.routing_key
    )


def describe(declaration: Declaration) -> str:
    if isinstance(declaration, Exchange):
        return f"exchange {declaration.name}"
    if isinstance(declaration, Queue):
        return f"queue {declaration.name}"
    return (
        f"binding of queue {declaration.queue} to {declaration.exchange}"
        f" (key {declaration.routing_key!r})"
    )


def refusal(declaration: Declaration, exc: Interrupted) -> RabbitryError:
    """The error for a ``declaration`` the broker refused, naming it."""
    text = f"{describe(declaration)}: {exc.reply_code} {exc.reply_text}"
    if exc.reply_code == _PRECONDITION_FAILED:
        hint = (
            "set RABBITRY_QUEUE_TYPE to the queue's type (classic or quorum), or move its"
            " messages and delete it so Rabbitry declares it again"
            if isinstance(declaration, Queue)
            else "delete the exchange so Rabbitry declares it again"
        )
        return ConfigError(f"the broker has it declared differently: {text}; {hint}")
    if exc.reply_code == _NOT_FOUND:
        return NotFound(text)
    return BrokerError(text)


class Pipeline:
    """Declares topologies on a wire link of its own, opened on first use and again after a
    refusal closed it; close it (or use ``async with``) when done.

    ``url``, ``name``, ``timeout`` and ``rpc_timeout`` are :meth:`Link.connect`'s; the link is
    named ``<name>-declarer``.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "rabbitry",
        timeout: float = 5.0,
        rpc_timeout: float | None = None,
        window: int = WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._url = url
        self._name = f"{name}-declarer"
        self._timeout = timeout
        self._rpc_timeout = rpc_timeout
        self._window = window
        self._link: Link | None = None

    async def declare(self, topology: Topology) -> None:
        """Declare ``topology``: raises :class:`ConfigError` when the broker has one of its
        objects with other arguments, :class:`NotFound` or :class:`BrokerError` for another
        refusal (each naming the object), :class:`BrokerError` when it cannot be reached."""
        refused = await self.declare_groups([topology])
        if refused:
            raise refused[0]

    async def declare_groups(
        self, groups: Sequence[Topology], on_done: Callable[[int], None] | None = None
    ) -> dict[int, RabbitryError]:
        """Declare every group, pipelined across groups, in their order; an object several
        groups share is declared once. Returns the groups the broker refused, by index, with
        the error naming the refused object (the groups after it are declared all the same).
        ``on_done(index)`` is called as each group is fully declared, so a caller keeps that
        progress when the broker goes away half-way: that raises :class:`BrokerError`."""
        done: set[Declaration] = set()
        refused: dict[int, RabbitryError] = {}
        reported: set[int] = set()
        wanted = [declarations(group) for group in groups]
        while True:
            order: list[Declaration] = []
            owners: dict[Declaration, list[int]] = {}
            for index, group in enumerate(wanted):
                if index in refused:
                    continue
                for declaration in group:
                    if declaration not in owners and declaration not in done:
                        order.append(declaration)
                    owners.setdefault(declaration, []).append(index)
            try:
                if order:
                    link = await self._open()
                    await link.call_all([method_of(d) for d in order], self._window)
                done.update(order)
            except Interrupted as exc:
                done.update(order[: exc.done])
                if not exc.refused:
                    raise BrokerUnavailable(f"declaring topology: {exc}") from exc
                culprit = order[exc.done]
                error = refusal(culprit, exc)
                log.warning("%s: %s", self._name, error)
                for index in owners[culprit]:
                    refused[index] = error
                continue
            finally:
                self._report(wanted, done, refused, reported, on_done)
            return refused

    @staticmethod
    def _report(
        wanted: list[list[Declaration]],
        done: set[Declaration],
        refused: dict[int, RabbitryError],
        reported: set[int],
        on_done: Callable[[int], None] | None,
    ) -> None:
        for index, group in enumerate(wanted):
            if index in reported or index in refused:
                continue
            if all(declaration in done for declaration in group):
                reported.add(index)
                if on_done is not None:
                    on_done(index)

    async def _open(self) -> Link:
        link = self._link
        if link is not None and link.is_open:
            return link
        try:
            self._link = await Link.connect(
                self._url, name=self._name, timeout=self._timeout, rpc_timeout=self._rpc_timeout
            )
        except LinkError as exc:
            raise BrokerUnavailable(f"declaring topology: broker unreachable: {exc}") from exc
        return self._link

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            with contextlib.suppress(BrokerError):
                await link.close()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
