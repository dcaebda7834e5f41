"""A queue of this process's own: exclusive, auto-delete, bound to one exchange with routing keys
that come and go at run time (the chat gateway's per-instance queue).

The queue lives and dies with its connection. Exclusive: only the connection that declared it
may bind or consume it, so declaring, binding and consuming all happen on one :class:`Link`.
Auto-delete: when this process goes, so does its queue, and nothing is routed to it any more.

The :class:`Inbox` keeps two sets apart: the routing keys its owner *wants* (:meth:`want`,
:meth:`drop`, plain synchronous calls) and the keys *bound* on the broker now. One task
reconciles them, so however wants and drops of one key race, the binding ends up matching the
last word, and nothing but that task touches the broker. When the connection drops, the queue
and its bindings are gone; the Inbox connects again, declares a *new* queue (a new name: the
broker may keep the old one until it notices the dead connection), binds every wanted key and
consumes again.

Binding is done in bounded windows: each window's replies must come within the link's RPC
timeout, so a gateway with ten thousand rooms rebinds window by window instead of sending every
bind at once and timing out on the last ones (which aborted the link and started the whole set
again). Keys a caller is waiting on (:meth:`bound`: a socket waiting to open) go first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from rabbitry.amqp.base import LinkClosed, Received
from rabbitry.amqp.link import Link
from rabbitry.errors import BrokerError, MessageError
from rabbitry.messaging import envelope
from rabbitry.messaging.connection import reconnecting
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.settings import AmqpSettings
from rabbitry.messaging.topology import Exchange

log = logging.getLogger(__name__)

MAX_BACKOFF = 5.0
FIRST_WINDOW = 64
MAX_WINDOW = 4096
MIN_WINDOW = 16


class Inbox:
    """An exclusive, auto-delete queue bound to ``exchange`` with the wanted routing keys.

    ``exchange`` is declared on every connection, so the queue can bind even on a fresh broker.

    ``on_message`` runs for each delivery, inside the connection's read loop: it must not block.
    ``on_connected(n)`` runs once the ``n``-th connection's queue is consumed and bound (from 2
    on, after a loss: what was routed meanwhile is gone, and the owner may want to catch up).
    Deliveries are acked as they arrive (the queue dies with the process anyway). ``name`` is
    the connection name and the queue's prefix: ``<name>.<n>``, ``n`` counting connections.
    A :class:`~rabbitry.messaging.service.Service`: run it with ``run(stopping)``.

    ``skip(message_id, headers)``, if given, sees each delivery's message id and AMQP headers
    first: True drops it (acked) before its body is decoded, for deliveries the owner can
    tell apart by a header alone (the gateway's own messages, routed back to it).
    """

    def __init__(
        self,
        amqp: AmqpSettings,
        *,
        name: str,
        exchange: Exchange,
        on_message: Callable[[Message], None],
        on_connected: Callable[[int], None] | None = None,
        prefetch: int = 1000,
        skip: Callable[[str | None, Mapping[str, Any]], bool] | None = None,
    ) -> None:
        self.name = name
        self._settings = amqp
        self._exchange = exchange
        self._on_message = on_message
        self._on_connected = on_connected
        self._prefetch = prefetch
        self._skip = skip
        # Insertion-ordered: after a reconnect the rooms rebind oldest first.
        self._wanted: dict[str, None] = {}
        self._bound: set[str] = set()
        # Futures of the callers of bound(), by key: woken one key at a time (a gateway
        # rebinding ten thousand rooms must not wake ten thousand waiters per window).
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._window = FIRST_WINDOW
        self._changed = asyncio.Event()
        self._link: Link | None = None
        self._generation = 0
        self.queue: str | None = None
        """The queue's name while connected."""
        self.connected = asyncio.Event()
        """Set while the queue exists and is consumed."""
        self.delivered = 0
        """Deliveries received since start (what the broker routed to this instance)."""

    # --- what the owner wants --------------------------------------------------------------

    def want(self, key: str) -> None:
        """Bind ``key`` (soon: await :meth:`bound` to know when)."""
        if key not in self._wanted:
            self._wanted[key] = None
            self._changed.set()

    def drop(self, key: str) -> None:
        """Unbind ``key`` (soon)."""
        if key in self._wanted:
            del self._wanted[key]
            self._changed.set()
            self._wake(key)

    @property
    def generation(self) -> int:
        """How many connections the inbox has opened (a reconnect adds one)."""
        return self._generation

    @property
    def wanted(self) -> frozenset[str]:
        return frozenset(self._wanted)

    @property
    def bound_keys(self) -> frozenset[str]:
        """The keys bound on the broker now, as far as this process knows."""
        return frozenset(self._bound)

    async def bound(self, key: str, timeout: float) -> bool:
        """Wait until ``key`` is bound; False if it was dropped or ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while key in self._wanted and key not in self._bound and loop.time() < deadline:
            waiter = loop.create_future()
            self._waiters.setdefault(key, []).append(waiter)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await waiter
            finally:
                waiters = self._waiters.get(key, [])
                if waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._waiters[key]
        return key in self._bound

    def _wake(self, key: str) -> None:
        for waiter in self._waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    # --- the broker side ------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Keep the queue up until ``stopping``; reconnect (with backoff) when it is lost."""
        await reconnecting(
            self.name,
            lambda: self._session(stopping),
            stopping,
            first_pause=0.25,
            max_pause=MAX_BACKOFF,
        )

    async def _session(self, stopping: asyncio.Event) -> None:
        link = await Link.connect(
            self._settings.url,
            name=self.name,
            timeout=self._settings.connect_timeout,
            rpc_timeout=self._settings.rpc_timeout,
        )
        try:
            self._generation += 1
            exchange = self._exchange
            await link.declare_exchange(
                exchange.name, exchange.type.value, durable=exchange.durable
            )
            queue = await link.declare_queue(
                f"{self.name}.{self._generation}", exclusive=True, auto_delete=True
            )
            await link.qos(self._prefetch)
            self._link, self.queue = link, queue
            await link.consume(queue, self._on_delivery)
            self.connected.set()
            log.info("%s: consuming %s", self.name, queue)
            first = True
            while not stopping.is_set():
                await self._reconcile(link, queue)
                if first and self._on_connected is not None:
                    self._on_connected(self._generation)
                first = False
                await _first(self._changed.wait(), stopping.wait(), _closed(link))
                if link.closed.done():
                    raise LinkClosed("connection lost")
        finally:
            self.connected.clear()
            self._bound.clear()
            self._link = self.queue = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.close(), timeout=2)

    async def _reconcile(self, link: Link, queue: str) -> None:
        """Bind what is wanted and not bound, unbind the reverse, until both sets agree; a
        bounded window of calls at a time, sized so its replies come well within the link's
        RPC timeout."""
        loop = asyncio.get_running_loop()
        budget = self._settings.rpc_timeout / 4
        while True:
            self._changed.clear()
            missing = [key for key in self._wanted if key not in self._bound]
            extra = [key for key in self._bound if key not in self._wanted]
            if not missing and not extra:
                return
            # Sockets waiting to open go first: joins are served while thousands rebind.
            missing.sort(key=lambda key: key not in self._waiters)
            window = self._window
            binds, unbinds = missing[:window], extra[: max(0, window - len(missing))]
            started = loop.time()
            # One write, replies in order: a window of keys costs one round trip.
            try:
                await asyncio.gather(
                    *(link.bind_queue(queue, self._exchange.name, key) for key in binds),
                    *(link.unbind_queue(queue, self._exchange.name, key) for key in unbinds),
                )
            except BrokerError:
                if loop.time() - started >= self._settings.rpc_timeout:
                    # The window's last reply came too late and aborted the link: the next
                    # connection starts with a smaller one, so the rebind converges.
                    self._window = max(window // 4, MIN_WINDOW)
                raise
            self._bound.update(binds)
            self._bound.difference_update(unbinds)
            for key in binds:
                self._wake(key)
            elapsed = loop.time() - started
            if len(binds) + len(unbinds) >= window:
                if elapsed < budget / 2:
                    self._window = min(window * 2, MAX_WINDOW)
                elif elapsed > budget:
                    self._window = max(window // 2, MIN_WINDOW)

    def _on_delivery(self, delivery: Received) -> None:
        link = self._link
        if link is not None and link.is_open:
            link.ack(delivery.delivery_tag)
        self.delivered += 1
        skip = self._skip
        if skip is not None and delivery.error is None:
            properties = delivery.properties
            if skip(properties.message_id, properties.headers or {}):
                return  # (acked above: the owner has no use for it, and no body decoded)
        try:
            message = envelope.decode_received(delivery, strict=False)
        except MessageError as exc:
            log.warning("%s: dropping an undecodable delivery: %s", self.name, exc)
            return
        self._on_message(message)


async def _closed(link: Link) -> None:
    with contextlib.suppress(BaseException):
        await asyncio.shield(link.closed)


async def _first(*waits: object) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
