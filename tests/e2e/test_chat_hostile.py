"""WebSocket frame fuzzing against a real gateway (``rabbitry up`` in a process): random,
truncated, huge, binary, deeply nested and wrongly typed frames, and a flood. Each gets an error
frame or a close with a code; the gateway never crashes and the room never gets stuck. Also the
sockets-per-user cap (docs/security.md)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fixtures.chat import ChatSystem, chat_system, socket_url

TENANT = "acme"
SEED = 1717
RANDOM_FRAMES = 300


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatSystem]:
    # One gateway for the module: each test uses users of its own, and the gateway's staying
    # healthy across all of them is part of what is tested.
    with chat_system(tmp_path_factory.mktemp("hostile"), extra_gateways=0) as running:
        running.create_tenant(TENANT)
        yield running


async def _next(socket: ClientConnection, timeout: float = 20) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return dict(json.loads(await socket.recv()))


async def _closed_code(socket: ClientConnection, timeout: float = 20) -> int | None:
    """The close code, once the server closed the socket (frames before it are skipped)."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await socket.recv()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else None


def _garbage(rng: random.Random) -> str | bytes:
    """One hostile frame: never a valid ``{"text": "..."}``."""
    kind = rng.randrange(9)
    if kind == 0:  # random bytes as text
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.randrange(1, 200)))
    if kind == 1:  # truncated JSON
        return json.dumps({"text": "hello " * rng.randrange(1, 50)})[: rng.randrange(1, 12)]
    if kind == 2:  # deeply nested, within the 8 KB frame limit
        depth = rng.randrange(900, 4000)
        return "[" * depth + "]" * depth
    if kind == 3:  # deeply nested objects
        depth = rng.randrange(500, 1300)
        return '{"text":' * depth + '"x"' + "}" * depth
    if kind == 4:  # wrong types
        return json.dumps(
            rng.choice([{"text": 1}, {"text": None}, {"text": []}, [], None, 3.5, "text", {}])
        )
    if kind == 5:  # extra keys
        return json.dumps({"text": "hi", "sender": "admin", "room": "other"})
    if kind == 6:  # binary
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 7:  # over the 8 KB frame limit, under the transport's
        return json.dumps({"text": "y" * rng.randrange(8200, 30_000)})
    return json.dumps({"text": " \t\n "})  # blank


async def test_random_and_hostile_frames_each_get_an_error_frame_and_the_room_goes_on(
    system: ChatSystem,
) -> None:
    system.create_user(TENANT, "ann")
    system.create_user(TENANT, "bob")
    ann, bob = system.login(TENANT, "ann"), system.login(TENANT, "bob")  # "lobby"
    base = system.api
    rng = random.Random(SEED)
    async with (
        websockets.connect(socket_url(base, "lobby", TENANT, ann)) as attacker,
        websockets.connect(socket_url(base, "lobby", TENANT, bob)) as witness,
    ):
        for _ in range(RANDOM_FRAMES):
            await attacker.send(_garbage(rng))
            frame = await _next(attacker)
            assert set(frame) == {"error"} and frame["error"], frame
        # A flood: past the burst, the rate limit answers; nothing is lost for anyone else.
        for n in range(60):
            await attacker.send(json.dumps({"text": f"flood {n}"}))
        answers = [await _next(attacker) for _ in range(60)]
        limited = [a for a in answers if "error" in a]
        assert limited and all("rate limit" in a["error"] for a in limited)
        # The room is not stuck: the witness hears a new message, its own.
        await witness.send(json.dumps({"text": "still here"}))
        while (frame := await _next(witness)).get("text") != "still here":
            assert "text" in frame
        assert frame["sender"] == "bob"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{base}/healthz", timeout=10)).status_code == 200


async def test_a_frame_over_the_transport_limit_closes_the_socket_with_1009(
    system: ChatSystem,
) -> None:
    system.create_user(TENANT, "cid")
    token = system.login(TENANT, "cid")
    base = system.api
    async with websockets.connect(socket_url(base, "big", TENANT, token), max_size=None) as socket:
        await socket.send("x" * (1024 * 1024))
        assert await _closed_code(socket) == 1009
    # The gateway is alive and takes new sockets.
    async with websockets.connect(socket_url(base, "big", TENANT, token)) as again:
        await again.send(json.dumps({"text": "after"}))
        assert (await _next(again))["text"] == "after"


async def test_one_user_holds_at_most_sixteen_sockets_per_gateway(system: ChatSystem) -> None:
    system.create_user(TENANT, "dan")
    token = system.login(TENANT, "dan")
    url = socket_url(system.api, "many", TENANT, token)
    sockets = [await websockets.connect(url) for _ in range(16)]
    try:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(url)
        assert refused.value.response.status_code == 403
        await sockets[0].close()
        await asyncio.wait_for(sockets[0].wait_closed(), 20)

        # Once the gateway has let the closed one go, there is room for one more.
        async def one_more() -> ClientConnection | None:
            try:
                return await websockets.connect(url)
            except InvalidStatus:
                await asyncio.sleep(0.1)
                return None

        async with asyncio.timeout(20):
            while (extra := await one_more()) is None:
                pass
        sockets[0] = extra
    finally:
        for socket in sockets:
            await socket.close()
