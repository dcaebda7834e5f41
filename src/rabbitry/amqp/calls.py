"""Calls on the wire client's channel that wait for their replies: the broker answers a
channel's calls in the order it got them, so each reply is matched to the oldest call waiting.
A call that gets no reply within the RPC timeout closes the link, and every way the link dies
fails the calls waiting.

:meth:`RpcProtocol.call_all` pipelines them: a window of calls in flight, one round trip a
window rather than one a call (:mod:`rabbitry.amqp.pipeline` declares topology with it).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from pamqp import base, commands

from rabbitry.amqp import wire
from rabbitry.amqp.base import Interrupted, LinkClosed, LinkError
from rabbitry.amqp.protocol import CHANNEL, AmqpProtocol, consume_exception
from rabbitry.amqp.url import Endpoint

log = logging.getLogger(__name__)

_REPLIES = frozenset(
    {
        commands.Confirm.SelectOk.index,
        commands.Basic.QosOk.index,
        commands.Basic.ConsumeOk.index,
        commands.Basic.CancelOk.index,
        commands.Exchange.DeclareOk.index,
        commands.Queue.DeclareOk.index,
        commands.Queue.BindOk.index,
        commands.Queue.UnbindOk.index,
    }
)


class RpcProtocol(AmqpProtocol):
    """An :class:`~rabbitry.amqp.protocol.AmqpProtocol` whose channel takes calls that wait for
    their replies."""

    def __init__(
        self,
        endpoint: Endpoint,
        name: str,
        heartbeat: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(endpoint, name, heartbeat, loop)
        self._rpc: deque[tuple[asyncio.Future[Any], Callable[[Any], None] | None]] = deque()

    def _control_handlers(self) -> dict[int, Callable[[int, Any], None]]:
        handlers = super()._control_handlers()
        handlers.update(dict.fromkeys(_REPLIES, self._reply))
        return handlers

    def _fail_pending(self, exc: LinkClosed) -> None:
        while self._rpc:
            future, _ = self._rpc.popleft()
            if not future.done():
                future.set_exception(exc)
                future.add_done_callback(consume_exception)  # its caller may have given up
        super()._fail_pending(exc)

    def _reply(self, channel: int, method: base.Frame) -> None:
        if not self._rpc:
            raise wire.FrameError(f"unexpected {method.name}")
        future, hook = self._rpc.popleft()
        if hook is not None:
            hook(method)
        if not future.done():
            future.set_result(method)

    async def _call(self, method: base.Frame, hook: Callable[[Any], None] | None = None) -> Any:
        """Send ``method`` and wait, at most the RPC timeout, for its reply.

        Replies come in call order, so a reply that is late would answer the next call: a
        timeout closes the link rather than let the queue of calls fall out of step.
        """
        self._check_open()
        # Marshal first: a method that cannot be encoded (qos(70000)) fails alone, before a
        # future joins the queue of calls waiting for replies.
        try:
            frame = wire.method_frame(CHANNEL, method)
        except (TypeError, ValueError, struct.error) as exc:
            raise LinkError(f"cannot send {method.name}: {exc}") from None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._rpc.append((future, hook))
        self._send(frame)
        try:
            async with asyncio.timeout(self._rpc_timeout):
                return await asyncio.shield(future)
        except TimeoutError:
            reason = f"no reply to {method.name} within {self._rpc_timeout:g}s"
            log.warning("%s: %s; closing the link", self._name, reason)
            self._abort(LinkClosed(reason))
            raise LinkClosed(reason) from None

    async def call_all(
        self,
        methods: Sequence[base.Frame],
        window: int,
        hooks: Sequence[Callable[[Any], None] | None] = (),
    ) -> list[Any]:
        """Send ``methods`` pipelined, at most ``window`` unanswered at a time, and return
        their replies in order (the broker answers a channel's calls in the order it got them).

        One round trip for a window, not one per call: 2,000 tenants' queues, bindings and
        consumers declared one call at a time spent ~0.8 ms each waiting on the round trip on a
        quiet machine, ten times that on a loaded one. The RPC timeout bounds the broker's
        silence, not a window: each reply is awaited at most the RPC timeout from the later of
        its send and the reply before it, so a slow but working broker finishes a long run and
        a stuck one is given up on. A method that cannot be encoded raises
        :class:`LinkError` before anything is sent. A run cut short raises
        :class:`Interrupted`, saying how many calls were answered and whether the broker
        refused the next one (a channel error, which also closes this link). ``hooks``, one
        per method if given, run on each reply as it is read, before what follows it.
        """
        if window < 1:
            raise ValueError("window must be at least 1")
        self._check_open()
        frames = []
        for method in methods:
            try:
                frames.append(wire.method_frame(CHANNEL, method))
            except (TypeError, ValueError, struct.error) as exc:
                raise LinkError(f"cannot send {method.name}: {exc}") from None
        loop, timeout = self._loop, self._rpc_timeout
        replies: list[Any] = []
        in_flight: deque[tuple[asyncio.Future[Any], float]] = deque()
        sent = 0
        try:
            while len(replies) < len(frames):
                while sent < len(frames) and len(in_flight) < window:
                    self._check_open()
                    future: asyncio.Future[Any] = loop.create_future()
                    self._rpc.append((future, hooks[sent] if hooks else None))
                    self._out.append(frames[sent])
                    in_flight.append((future, loop.time() + timeout))
                    sent += 1
                self._schedule_flush()
                future, deadline = in_flight.popleft()
                try:
                    async with asyncio.timeout_at(deadline):
                        replies.append(await asyncio.shield(future))
                except TimeoutError:
                    reason = f"no reply to {methods[len(replies)].name} within {timeout:g}s"
                    log.warning("%s: %s; closing the link", self._name, reason)
                    self._abort(LinkClosed(reason))
                    raise LinkClosed(reason) from None
                if in_flight:
                    # The next reply's clock starts no earlier than this one's arrival.
                    head, due = in_flight[0]
                    in_flight[0] = (head, max(due, loop.time() + timeout))
        except LinkClosed as exc:
            index = len(replies)
            refused = (
                exc.reply_code not in (0, 200)
                and index < len(methods)
                and self._closed_over == methods[index].index
            )
            raise Interrupted(exc, index, refused, replies) from None
        return replies
