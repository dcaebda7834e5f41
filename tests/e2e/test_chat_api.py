"""The chat's edges against the running system (``rabbitry up`` + ``rabbitry serve chat`` + a
chat-persist worker): the rate limit at its real numbers, the history API's refusals and its
paging, and the close code a client sees when its gateway shuts down, then its reconnection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from fixtures.chat import ChatSystem, chat_system, socket_url
from helpers import eventually_true
from rabbitry.chat.http import BURST, RATE

TENANT = "acme"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatSystem]:
    """One system for the tests that leave it as they found it."""
    with chat_system(tmp_path_factory.mktemp("chat")) as running:
        running.create_tenant(TENANT)
        yield running


async def frames(socket: ClientConnection, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(60):
        while len(got) < count:
            got.append(json.loads(await socket.recv()))
    return got


async def test_a_client_sending_faster_than_ten_a_second_gets_its_burst_of_twenty_then_errors(
    system: ChatSystem,
) -> None:
    system.create_user(TENANT, "fast")
    token = system.login(TENANT, "fast")
    sent = 3 * BURST  # taking all of these would need 4 s of reading at 10 a second
    async with websockets.connect(socket_url(system.api, "flood", TENANT, token)) as socket:
        for i in range(sent):
            await socket.send(json.dumps({"text": f"m{i}"}))
        # Every frame is answered: a message back (the sender gets its own) or an error.
        answers = await frames(socket, sent)

    delivered = [f["text"] for f in answers if "text" in f]
    refused = [f["error"] for f in answers if "error" in f]
    assert len(delivered) + len(refused) == sent
    assert BURST <= len(delivered) < sent
    assert delivered[:BURST] == [f"m{i}" for i in range(BURST)]  # the burst goes through whole
    assert set(refused) == {f"rate limit: at most {RATE:g} messages a second"}
    assert f"{RATE:g}" == "10" and BURST == 20  # the numbers docs/chat.md gives


async def test_a_client_asking_for_lines_gets_each_message_once_in_order_and_others_one_a_frame(
    system: ChatSystem,
) -> None:
    system.create_user(TENANT, "liner")
    token = system.login(TENANT, "liner")
    url = socket_url(system.api, "lined", TENANT, token)
    texts = [f"l{i}" for i in range(BURST)]
    async with (
        websockets.connect(url + "&lines=1") as lined,
        websockets.connect(url) as plain,
    ):
        for text in texts:  # back to back: the lined socket's queue may hold several at once
            await lined.send(json.dumps({"text": text}))
        # (frames() parses each frame as one JSON object: a client without lines gets no more)
        one_a_frame = [f["text"] for f in await frames(plain, BURST)]
        got: list[str] = []
        async with asyncio.timeout(60):
            while len(got) < BURST:
                raw = await lined.recv()
                assert isinstance(raw, str)  # text frames
                got += [json.loads(line)["text"] for line in raw.split("\n")]
    assert got == texts == one_a_frame


async def test_the_history_api_refuses_without_a_valid_token_or_with_bad_input(
    system: ChatSystem,
) -> None:
    system.create_user(TENANT, "reader")
    token = system.login(TENANT, "reader")
    url = f"{system.api}/api/chat/rooms/lobby/messages"
    async with httpx.AsyncClient(timeout=30) as client:
        cases: list[tuple[str, dict[str, str], dict[str, str], int]] = [
            (url, {"tenant": TENANT}, {}, 401),
            (url, {"tenant": TENANT}, {"Authorization": "Bearer acme.not-a-token"}, 401),
            (url, {"tenant": TENANT}, {"Authorization": f"Basic {token}"}, 401),
            (url, {"tenant": "globex"}, {"Authorization": f"Bearer {token}"}, 401),
            (
                f"{system.api}/api/chat/rooms/bad.room/messages",
                {"tenant": TENANT},
                {"Authorization": f"Bearer {token}"},
                400,
            ),
            (url, {"tenant": TENANT, "before": "x"}, {"Authorization": f"Bearer {token}"}, 400),
            (url, {"tenant": TENANT, "limit": "0"}, {"Authorization": f"Bearer {token}"}, 422),
            (url, {}, {"Authorization": f"Bearer {token}"}, 422),
        ]
        for target, params, headers, status in cases:
            answer = await client.get(target, params=params, headers=headers)
            assert answer.status_code == status, (target, params, headers, answer.text)
            assert answer.json()["error"], answer.text
        fine = await client.get(
            url, params={"tenant": TENANT}, headers={"Authorization": f"Bearer {token}"}
        )
    assert fine.status_code == 200
    assert fine.json() == {"room": "lobby", "messages": [], "next_before": None}


async def test_history_pages_newest_first_and_next_before_walks_to_the_oldest(
    system: ChatSystem,
) -> None:
    system.create_user(TENANT, "pager")
    token = system.login(TENANT, "pager")
    async with websockets.connect(socket_url(system.api, "pages", TENANT, token)) as socket:
        for i in range(5):
            await socket.send(json.dumps({"text": f"p{i}"}))
        ids = [f["id"] for f in await frames(socket, 5)]

    async def stored() -> bool:
        return len(system.history(TENANT, "pages", token)) == 5

    await eventually_true(stored, timeout=30, what="the five messages in the history")
    url = f"{system.api}/api/chat/rooms/pages/messages"
    seen: list[list[str]] = []
    before: str | None = None
    async with httpx.AsyncClient(timeout=30) as client:
        while True:
            params = {"tenant": TENANT, "limit": "2", **({"before": before} if before else {})}
            page = (
                await client.get(url, params=params, headers={"Authorization": f"Bearer {token}"})
            ).json()
            seen.append([m["text"] for m in page["messages"]])
            before = page["next_before"]
            if before is None:
                break
            assert before == page["messages"][-1]["id"]
    assert seen == [["p4", "p3"], ["p2", "p1"], ["p0"]]
    assert len(set(ids)) == 5


@pytest.fixture
def fresh_system(tmp_path: Path) -> Iterator[ChatSystem]:
    """A system of the test's own, for a test that stops part of it."""
    with chat_system(tmp_path) as running:
        running.create_tenant(TENANT)
        yield running


async def test_a_gateway_shutting_down_closes_its_sockets_going_away_and_the_client_comes_back(
    fresh_system: ChatSystem,
) -> None:
    system = fresh_system
    for user in ("ann", "bob"):
        system.create_user(TENANT, user)
    ann, bob = system.login(TENANT, "ann"), system.login(TENANT, "bob")
    first, second = system.gateways
    async with websockets.connect(socket_url(first, "talk", TENANT, bob)) as bob_socket:
        ann_socket = await websockets.connect(socket_url(second, "talk", TENANT, ann))
        await bob_socket.send(json.dumps({"text": "hello"}))
        (seen,) = await frames(ann_socket, 1)
        await frames(bob_socket, 1)

        code = await asyncio.to_thread(system.stop_process, "gateway1")
        await asyncio.wait_for(ann_socket.wait_closed(), 60)
        assert code == 0
        assert (ann_socket.close_code, ann_socket.close_reason) == (
            1001,
            "the gateway is shutting down",
        )
        # Bob's gateway is unaffected; Ann comes back through it and misses nothing.
        await bob_socket.send(json.dumps({"text": "while away"}))
        await frames(bob_socket, 1)
        url = socket_url(first, "talk", TENANT, ann, since=seen["id"])
        async with websockets.connect(url) as back:
            (missed,) = await frames(back, 1)
            await bob_socket.send(json.dumps({"text": "live"}))
            (live,) = await frames(back, 1)
        assert (missed["text"], live["text"]) == ("while away", "live")
        assert (back.close_code, back.close_reason) == (1000, "")
