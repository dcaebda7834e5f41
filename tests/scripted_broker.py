"""A scripted broker for unit tests of :class:`Link` as an asyncio.Protocol (no network).

The broker's side is pamqp-marshalled frames fed to ``data_received`` (:func:`feed`); the
:class:`Transport` records what the link writes. Import by name
(``from scripted_broker import Transport, feed, open_link, turns``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pamqp import commands
from pamqp import frame as pamqp_frame

from rabbitry.amqp import wire
from rabbitry.amqp.handshake import Endpoint
from rabbitry.amqp.link import Link


class Transport(asyncio.Transport):
    """Records what the link writes, and whether it closed or aborted the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def frames(self) -> list[Any]:
        """Everything written since the last call, unmarshalled by pamqp."""
        data = b"".join(self.writes)
        self.writes.clear()
        out: list[Any] = []
        while data:
            used, _, value = pamqp_frame.unmarshal(data)
            out.append(value)
            data = data[used:]
        return out


def feed(link: Link, channel: int, *methods: Any) -> None:
    """The broker sends ``methods`` on ``channel``, in one read."""
    link.data_received(b"".join(pamqp_frame.marshal(m, channel) for m in methods))


async def turns(count: int = 2) -> None:
    """Let the loop run ``count`` times: a call starts in one turn, its flush (call_soon) in
    the next."""
    for _ in range(count):
        await asyncio.sleep(0)


async def open_link(
    *, heartbeat: int = 0, frame_max: int = 131072, rpc_timeout: float = 10.0
) -> tuple[Link, Transport]:
    """A link through the handshake (checked frame by frame), channel 1 open, in confirm mode;
    nothing left in the transport's writes."""
    link = Link(
        Endpoint.from_url("amqp://guest:guest@localhost/"),
        "t",
        heartbeat,
        asyncio.get_running_loop(),
    )
    link._rpc_timeout = rpc_timeout
    transport = Transport()
    link.connection_made(transport)
    assert transport.writes.pop(0) == wire.PROTOCOL_HEADER
    feed(link, 0, commands.Connection.Start(mechanisms="PLAIN AMQPLAIN"))
    feed(link, 0, commands.Connection.Tune(2047, frame_max, heartbeat))
    feed(link, 0, commands.Connection.OpenOk())
    feed(link, 1, commands.Channel.OpenOk())
    await turns(1)
    sent = [type(f) for f in transport.frames()]
    assert sent == [
        commands.Connection.StartOk,
        commands.Connection.TuneOk,
        commands.Connection.Open,
        commands.Channel.Open,
    ]
    assert link.is_open
    select = asyncio.ensure_future(link.confirm_select())
    await turns()
    assert [type(f) for f in transport.frames()] == [commands.Confirm.Select]
    feed(link, 1, commands.Confirm.SelectOk())
    await select
    return link, transport
