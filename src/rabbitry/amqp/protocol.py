"""The connection under :class:`~rabbitry.amqp.link.Link`: an asyncio.Protocol speaking
AMQP 0-9-1 frames on channel 0 and one channel.

It opens and closes the connection (a cluster's hosts in turn: :mod:`rabbitry.amqp.failover`),
sends and checks heartbeats, writes through its :class:`~rabbitry.amqp.writer.FrameWriter` base
(every frame queued in one loop turn in one ``transport.write``, held while the transport is
paused), and turns every way of dying (the broker's Connection.Close or Channel.Close, a lost
socket, silence) into one :class:`LinkClosed`. What a channel carries is the subclasses':
calls that wait for replies (:class:`~rabbitry.amqp.calls.RpcProtocol`), then publishes and
deliveries (:class:`~rabbitry.amqp.link.Link`); they override :meth:`AmqpProtocol._on_method`,
:meth:`AmqpProtocol._on_message`, :meth:`AmqpProtocol._control_handlers` (the table of what to
do with each control method) and the ``_fail_pending``/``_on_failed``/``_flush_tail`` hooks.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Self

from pamqp import base, commands

from rabbitry.amqp import handshake, wire
from rabbitry.amqp.base import LinkClosed, LinkError
from rabbitry.amqp.failover import first_to_open
from rabbitry.amqp.properties import Properties
from rabbitry.amqp.url import DEFAULT_HEARTBEAT, Endpoint
from rabbitry.amqp.writer import FrameWriter

log = logging.getLogger(__name__)

# What decoding a foreign publisher's properties can raise (UnicodeDecodeError is a
# ValueError; a timestamp out of range an OverflowError or OSError; a header table nested
# thousands deep a RecursionError).
_UNDECODABLE = (ValueError, OverflowError, OSError, TypeError, RecursionError)

CHANNEL = 1


class AmqpProtocol(FrameWriter):
    """One AMQP connection with its channel 1 open. Create with :meth:`connect`."""

    closed: asyncio.Future[None]
    """Done when the link is gone: a :class:`LinkClosed` error unless :meth:`close` did it."""

    on_blocked: Callable[[str | None], None] | None
    """Hook the owner may set: called with the broker's reason when it blocks this connection
    (a memory or disk alarm: it stops reading until the alarm clears) and with ``None`` when
    it unblocks it. RabbitMQ blocks only connections that publish during an alarm."""

    def __init__(
        self,
        endpoint: Endpoint,
        name: str,
        heartbeat: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(loop)
        self._endpoint = endpoint
        self._name = name
        self._heartbeat = heartbeat
        self._rpc_timeout = 10.0
        self.on_blocked = None
        self._blocked: str | None = None
        self._buffer = bytearray()
        self._frame_max = 131072
        self._opened: asyncio.Future[None] = loop.create_future()
        self.closed = loop.create_future()
        self.closed.add_done_callback(consume_exception)
        self._error: LinkClosed | None = None
        self._closing = False
        self._clean_close = False
        self._abort_timer: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._received = False
        self._silent_ticks = 0
        self._closed_over: int | None = None  # the method index a broker's Channel.Close names
        # The content frames being assembled: body size announced and the parts so far.
        self._properties: Properties | None = None
        self._body_size = 0
        self._body_received = 0
        self._chunks: list[bytes] = []
        self._header = b""  # the content header's payload as received
        self._content_error = ""  # why the content being assembled did not decode, if it did not
        self._handlers = self._control_handlers()

    # --- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        name: str = "rabbitry",
        heartbeat: int = DEFAULT_HEARTBEAT,
        timeout: float = 5.0,
        rpc_timeout: float | None = None,
    ) -> Self:
        """Open a connection and its channel 1; see :mod:`rabbitry.amqp.url` for the URL.

        ``heartbeat`` is in seconds (0 turns heartbeats off); ``timeout`` bounds the handshake
        with each host; both yield to the URL's ``heartbeat`` and ``connection_timeout``.
        A URL with several hosts (a cluster) is tried host by host from a random one, until
        one opens. ``rpc_timeout`` (default: ``timeout``) bounds every later call that waits
        for the broker's reply. A refusal by the broker (e.g. 403 for bad credentials) raises
        :class:`LinkClosed`; no host reachable, silent hosts, or a TLS failure,
        :class:`LinkError`. Cancelled half-way, it closes what it opened.
        """
        try:
            endpoint = Endpoint.from_url(url)
            context = endpoint.ssl_context()
        except ValueError as exc:
            raise LinkError(str(exc)) from None
        timeout = endpoint.connection_timeout or timeout

        async def open_one(candidate: Endpoint) -> Self:
            link = cls(candidate, name, heartbeat, asyncio.get_running_loop())
            link._rpc_timeout = rpc_timeout or timeout
            await link._open(context, timeout)
            return link

        return await first_to_open(endpoint.candidates(), open_one)

    async def _open(self, context: ssl.SSLContext | None, timeout: float) -> None:
        """Connect to this link's (single-host) endpoint within ``timeout`` seconds."""
        endpoint, loop = self._endpoint, self._loop
        where = endpoint.where
        hostname = endpoint.host if context is not None else None
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: self,
                    endpoint.host,
                    endpoint.port,
                    ssl=context,
                    server_hostname=hostname,
                )
                await self._opened
        except TimeoutError:
            self._abort(LinkClosed(f"timed out connecting to {where}"))
            raise LinkError(f"timed out after {timeout}s connecting to {where}") from None
        except ssl.SSLError as exc:
            self._abort(LinkClosed(f"TLS failed with {where}: {exc}"))
            raise LinkError(f"TLS handshake with {where} failed: {exc}") from exc
        except OSError as exc:
            self._abort(LinkClosed(f"cannot connect to {where}: {exc}"))
            raise LinkError(f"cannot connect to {where}: {exc}") from exc
        except BaseException:
            # Cancelled (or failed) half-way: a connection nobody holds must not stay open,
            # heartbeating, until the broker gives up on it.
            self._abort(LinkClosed("connect() was cancelled"))
            raise

    @property
    def where(self) -> str:
        """The ``host:port`` this link connected to (one host of a cluster URL)."""
        return self._endpoint.where

    def abort(self, exc: LinkClosed) -> None:
        """Give up on the connection now: everything pending fails with ``exc`` and the socket
        is dropped without a farewell (for a broker that no longer answers)."""
        self._abort(exc)

    def _abort(self, exc: LinkClosed) -> None:
        transport = self._transport
        self._terminate(exc)
        if transport is not None:
            transport.abort()

    @property
    def is_open(self) -> bool:
        """True from a successful :meth:`connect` until the link closes."""
        return self._opened.done() and self._error is None

    @property
    def error(self) -> LinkClosed | None:
        """Why the link closed, once it has (``None`` while open)."""
        return self._error

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks this connection (an alarm), else ``None``."""
        return self._blocked

    async def close(self) -> None:
        """Close the connection; pending publishes fail with :class:`LinkClosed`.

        Acks already issued are sent first.
        """
        if self.closed.done():
            return
        if not self._closing:
            self._clean_close = True
            self._paused = False  # the acks and the close go out even if the socket is slow
            self._flush()
            close = commands.Connection.Close(200, "closed by the client", 0, 0)
            self._terminate(
                LinkClosed("closed by the client", 200),
                wire.method_frame(0, close),
                wait_close_ok=True,
            )
        await asyncio.shield(self.closed)

    def _terminate(self, exc: LinkClosed, *farewell: bytes, wait_close_ok: bool = False) -> None:
        """Fail everything pending with ``exc``, write ``farewell`` and end the connection.

        With ``wait_close_ok`` the transport stays open for the broker's Connection.CloseOk
        (aborted if it takes more than two seconds); ``closed`` completes in connection_lost.
        """
        if self._error is None:
            self._error = exc
            self._fail_pending(exc)
        transport = self._transport
        if transport is None:
            self._finish()
            return
        if self._closing:
            return
        self._closing = True
        if farewell:
            transport.write(b"".join(farewell))
        if wait_close_ok:
            self._abort_timer = self._loop.call_later(2.0, transport.abort)
        else:
            transport.close()

    def _fail_pending(self, exc: LinkClosed) -> None:
        for waiter in (self._opened, self._drained):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
                waiter.add_done_callback(consume_exception)
        self._out.clear()
        self._on_failed(exc)

    def _on_failed(self, exc: LinkClosed) -> None:
        """Hook: fail what the channel has pending."""

    def _finish(self) -> None:
        for timer in (self._abort_timer, self._heartbeat_timer):
            if timer is not None:
                timer.cancel()
        if not self.closed.done():
            if self._clean_close:
                self.closed.set_result(None)
            else:
                assert self._error is not None
                self.closed.set_exception(self._error)

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(wire.PROTOCOL_HEADER)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed by the broker"
        self._transport = None
        self._terminate(LinkClosed(reason))
        self._finish()

    def data_received(self, data: bytes) -> None:
        self._received = True
        buffer = self._buffer
        buffer += data
        try:
            # The hot loop: a delivery is three frames, so the common cases are inlined.
            for frame_type, channel, payload in wire.split_frames(buffer, self._frame_max):
                if frame_type == wire.FRAME_BODY:
                    if not self._chunks and len(payload) == self._body_size:
                        self._on_message(payload)
                    else:
                        self._on_body_part(payload)
                elif frame_type == wire.FRAME_HEADER:
                    self._header = payload
                    try:
                        self._body_size, self._properties = wire.parse_content_header(payload)
                    except _UNDECODABLE:
                        # One publisher's odd bytes are that message's problem, not the
                        # connection's: keep what can be read and let the owner decide.
                        self._body_size, self._properties, self._content_error = (
                            wire.salvage_content_header(payload)
                        )
                    if not self._body_size:
                        self._on_message(b"")
                elif frame_type == wire.FRAME_METHOD:
                    self._on_method(channel, payload)
        except wire.FrameError as exc:
            text = f"FRAME_ERROR - {exc}"
            close = commands.Connection.Close(501, text[:255], 0, 0)
            self._terminate(LinkClosed(text, 501), wire.method_frame(0, close), wait_close_ok=True)
        except Exception as exc:
            # A bug of ours must not leave a half-read connection behind: close it properly,
            # so the broker requeues what was delivered and the owner reconnects.
            log.exception("%s: unexpected error reading from the broker", self._name)
            text = f"INTERNAL_ERROR - {type(exc).__name__}: {exc}"
            close = commands.Connection.Close(541, text[:255], 0, 0)
            self._terminate(LinkClosed(text, 541), wire.method_frame(0, close), wait_close_ok=True)

    # --- reading -----------------------------------------------------------------------

    def _on_body_part(self, payload: bytes) -> None:
        self._chunks.append(payload)
        self._body_received += len(payload)
        if self._body_received >= self._body_size:
            body = b"".join(self._chunks)
            self._chunks, self._body_received = [], 0
            self._on_message(body)

    def _on_method(self, channel: int, payload: bytes) -> None:
        """Hook for the channel's own methods; the rest are control methods."""
        self._on_control(channel, wire.decode_method(payload))

    def _on_message(self, body: bytes) -> None:
        """Hook: a complete message (method, properties in ``_properties``, ``body``)."""
        raise wire.FrameError("content frames without a delivering method")

    def _on_control(self, channel: int, method: base.Frame) -> None:
        handler = self._handlers.get(method.index)
        if handler is None:
            log.debug("ignoring %s on channel %d", method.name, channel)
        else:
            handler(channel, method)

    def _control_handlers(self) -> dict[int, Callable[[int, Any], None]]:
        """What to do with each control method, by pamqp's method index: built once per link;
        a subclass adds the methods of its channel."""
        handlers: dict[int, Callable[[int, Any], None]] = {}
        handlers[commands.Connection.Start.index] = self._connection_start
        handlers[commands.Connection.Tune.index] = self._connection_tune
        handlers[commands.Connection.OpenOk.index] = self._connection_open_ok
        handlers[commands.Channel.OpenOk.index] = self._channel_open_ok
        handlers[commands.Connection.Close.index] = self._connection_close
        handlers[commands.Channel.Close.index] = self._channel_close
        handlers[commands.Connection.CloseOk.index] = self._connection_close_ok
        handlers[commands.Channel.Flow.index] = self._channel_flow
        handlers[commands.Connection.Blocked.index] = self._connection_blocked
        handlers[commands.Connection.Unblocked.index] = self._connection_unblocked
        return handlers

    def _connection_open_ok(self, channel: int, method: commands.Connection.OpenOk) -> None:
        self._send(wire.method_frame(CHANNEL, commands.Channel.Open()))

    def _channel_open_ok(self, channel: int, method: commands.Channel.OpenOk) -> None:
        if not self._opened.done():
            self._opened.set_result(None)

    def _connection_close(self, channel: int, method: commands.Connection.Close) -> None:
        error = LinkClosed(method.reply_text, method.reply_code or 0)
        close_ok = wire.method_frame(0, commands.Connection.CloseOk())
        if self._closing:
            # Both sides closed at once: the broker still waits for our CloseOk.
            self._answer_while_closing(close_ok)
            if self._transport is not None:
                self._transport.close()
        else:
            self._terminate(error, close_ok)

    def _channel_close(self, channel: int, method: commands.Channel.Close) -> None:
        # One channel is all a Link has, so the connection goes with it.
        error = LinkClosed(method.reply_text, method.reply_code or 0)
        channel_close_ok = wire.method_frame(channel, commands.Channel.CloseOk())
        if self._closing:
            self._answer_while_closing(channel_close_ok)
            return
        self._closed_over = ((method.class_id or 0) << 16) | (method.method_id or 0)
        self._on_channel_close(method)
        close = commands.Connection.Close(200, "channel closed", 0, 0)
        farewell = (channel_close_ok, wire.method_frame(0, close))
        self._terminate(error, *farewell, wait_close_ok=True)

    def _connection_close_ok(self, channel: int, method: commands.Connection.CloseOk) -> None:
        if self._transport is not None:
            self._transport.close()

    def _channel_flow(self, channel: int, method: commands.Channel.Flow) -> None:
        self._send(wire.method_frame(channel, commands.Channel.FlowOk(method.active)))

    def _connection_blocked(self, channel: int, method: commands.Connection.Blocked) -> None:
        self._blocked = method.reason or "blocked by the broker"
        log.warning("%s: the broker blocked the connection: %s", self._name, self._blocked)
        if self.on_blocked is not None:
            self.on_blocked(self._blocked)

    def _connection_unblocked(self, channel: int, method: commands.Connection.Unblocked) -> None:
        self._blocked = None
        log.info("%s: the broker unblocked the connection", self._name)
        if self.on_blocked is not None:
            self.on_blocked(None)

    def _on_channel_close(self, method: commands.Channel.Close) -> None:
        """Hook: the broker is closing the channel (before anything pending is failed)."""

    def _answer_while_closing(self, frame: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(frame)

    def _connection_start(self, channel: int, start: commands.Connection.Start) -> None:
        try:
            self._send(handshake.start_ok(start, self._endpoint, self._name))
        except ValueError as exc:
            self._terminate(LinkClosed(str(exc)))

    def _connection_tune(self, channel: int, tune: commands.Connection.Tune) -> None:
        frames, self._frame_max, self._heartbeat = handshake.tune_ok(
            tune, self._endpoint, self._heartbeat
        )
        self._send(frames)
        if self._heartbeat:
            self._heartbeat_timer = self._loop.call_later(self._heartbeat / 2, self._tick)

    def _tick(self) -> None:
        """Every half heartbeat interval: send one if idle, give up after two silent intervals."""
        if self._transport is None or self.closed.done():
            return
        if self._received:
            self._received, self._silent_ticks = False, 0
        else:
            self._silent_ticks += 1
            if self._silent_ticks >= 4:
                transport = self._transport
                self._terminate(LinkClosed("missed heartbeats from the broker"))
                transport.abort()
                return
        if not self._sent:
            self._transport.write(wire.HEARTBEAT)
        self._sent = False
        self._heartbeat_timer = self._loop.call_later(self._heartbeat / 2, self._tick)

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._opened.done():
            raise LinkError("the link is not connected yet")


def consume_exception(future: asyncio.Future[Any]) -> None:
    # Nobody may await ``closed``; reading the exception keeps asyncio from logging it.
    if not future.cancelled():
        future.exception()
