"""A chat socket lives no longer than the session it was opened with: a real gateway
(``rabbitry up``) with 3-second sessions closes the socket with 4002 (docs/security.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from fixtures.chat import ChatSystem, socket_url
from helpers import delete_namespace

TENANT = "acme"


@pytest.fixture
def short_sessions(tmp_path: Path) -> Iterator[ChatSystem]:
    system = ChatSystem(tmp_path, extra_gateways=0)
    system.env["RABBITRY_SESSION_TTL"] = "3"
    try:
        system.start()
        system.create_tenant(TENANT)
        yield system
    finally:
        system.stop()
        asyncio.run(delete_namespace(system.namespace))


async def test_a_socket_closes_when_its_session_expires(short_sessions: ChatSystem) -> None:
    short_sessions.create_user(TENANT, "ann")
    token = short_sessions.login(TENANT, "ann")
    async with websockets.connect(socket_url(short_sessions.api, "lobby", TENANT, token)) as s:
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(30):
                while True:
                    await s.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002
