"""HTTP and WebSocket: ``WS /chat/ws/{room}``, ``GET /api/chat/rooms/{room}/messages``, ``/chat/``.

``WS /chat/ws/{room}?tenant=T&token=TOKEN[&since=ID][&lines=1]`` — the token is a session token
of the sessions part; a bad room, tenant, ``since`` or token is refused before the upgrade
completes (HTTP 403). Then the client sends ``{"text": ...}`` frames and receives every message
of the room, its own included; with ``since`` it first receives what it missed after that id.
With ``lines=1`` a frame may carry several messages, one JSON object a line. If the
room's binding cannot be made (the broker is away), the socket is closed right after it opens
with code 1013 ("try again later"); a gateway that is scaling in closes with 1012.

``GET /api/chat/rooms/{room}/messages?tenant=T[&limit=N][&before=ID]`` with
``Authorization: Bearer TOKEN`` → ``{"room", "messages": [...newest first], "next_before"}``;
400 for a bad room, tenant or ``before``, 401 without a live session token of the tenant.

The part's lifespan (:func:`lifespan`) owns the process's gateway: its Manager, its queue and
its revocation watch.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.responses import HTMLResponse
from starlette.websockets import WebSocketDisconnect

from rabbitry.chat.client import RECONNECT, ConnectedClient, Member
from rabbitry.chat.gateway import Gateway
from rabbitry.chat.history import MAX_PAGE, ChatHistory
from rabbitry.chat.protocol import (
    FrameError,
    RateLimit,
    check_id,
    check_room,
    error_frame,
    parse_client_frame,
)
from rabbitry.chat.revocations import RevocationWatch
from rabbitry.errors import Invalid, RabbitryError
from rabbitry.messaging.publisher import PublishResult, PublishStatus
from rabbitry.metrics import GATEWAYS
from rabbitry.sessions import Principal, SessionManager, check_tenant, open_manager
from rabbitry.storage.clock import utcnow
from rabbitry.web import AppState, bearer_token, resource

log = logging.getLogger(__name__)
router = APIRouter(tags=["chat"])

POLICY_VIOLATION = 1008
SESSION_EXPIRED = 4002  # an application close code, beside the manager's REVOKED (4001)
TRY_AGAIN = 1013
RATE = 10.0  # messages a second per client, on average
BURST = 20
SEND_WINDOW = 8  # a socket's messages waiting for their confirms at once

Authenticate = Callable[[str, str], Awaitable[Principal | None]]

# A query parameter: its key (stopping at '=', '&', space or quote) and its value.
_QUERY_PARAM = re.compile(r"(?P<key>[^?&=\s\"']+)=(?P<value>[^&\s\"']*)")


def redact_tokens(text: str) -> str:
    """``text`` with the value of every ``token`` query parameter masked, however its key is
    spelt (``token``, ``%74oken``, ``TOKEN``: what the server would decode to ``token``)."""

    def mask(match: re.Match[str]) -> str:
        key = match.group("key")
        if unquote_plus(key).rsplit("?", 1)[-1].lower() == "token":
            return f"{key}=***"
        return match.group(0)

    return _QUERY_PARAM.sub(mask, text)


class _RedactTokens(logging.Filter):
    """uvicorn logs each WebSocket's path with its query string, where the session token
    travels: mask it, so no log line holds a usable credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_tokens(arg) if isinstance(arg, str) and "=" in arg else arg
                for arg in record.args
            )
        return True


@dataclass(frozen=True, slots=True)
class Chat:
    """What the chat routes use (the part's lifespan puts it on the app's state)."""

    gateway: Gateway
    history: ChatHistory
    authenticate: Authenticate
    max_sockets_per_user: int = 16


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The gateway of this process: started after the database and publisher, stopped first."""
    state = AppState.of(app)
    settings = state.settings
    assert state.database is not None and state.publisher is not None  # the app's lifespan's
    async with AsyncExitStack() as stack:
        redact = _RedactTokens()
        server_log = logging.getLogger("uvicorn.error")
        server_log.addFilter(redact)
        stack.callback(server_log.removeFilter, redact)
        sessions = state.find(SessionManager)
        if sessions is None:  # `rabbitry serve chat`: no session server in this process
            sessions = await stack.enter_async_context(
                open_manager(settings, state.database, publisher=state.publisher)
            )
        authenticate: Authenticate = sessions.authenticate
        history = ChatHistory(state.database)
        gateway = await stack.enter_async_context(
            Gateway(settings, state.publisher, history=history).running()
        )

        async def still_valid(tenant: str, token: str) -> bool:
            return await authenticate(tenant, token) is not None

        manager = sessions

        async def forget(tenant: str, user_id: int, session_id: str) -> int:
            return await manager.forget_sessions(tenant, user_id, [session_id])

        watch = RevocationWatch(gateway, still_valid, forget)
        await stack.enter_async_context(watch.running())
        chat = Chat(
            gateway,
            history,
            authenticate,
            max_sockets_per_user=settings.chat_max_sockets_per_user,
        )
        state.put(Chat, chat)
        GATEWAYS.add(
            gateway.instance,
            lambda: gateway.manager.clients(),
            lambda: len(gateway.manager.rooms),
        )
        stack.callback(GATEWAYS.discard, gateway.instance)
        # SIGTERM: scale in gradually (1012, over a few seconds), then whatever is left
        # goes with 1001, before the server drops the connections itself.
        state.before_shutdown.append(gateway.drain)
        if state.health is not None:  # the app's /readyz counts the gateway's own queue
            state.health.report("chat-gateway", gateway.readiness)
        state.before_shutdown.append(gateway.going_away)
        yield


ChatDep = Annotated[Chat, Depends(resource(Chat))]


@router.websocket("/chat/ws/{room}")
async def chat_socket(
    websocket: WebSocket,
    room: str,
    chat: ChatDep,
    tenant: str = "",
    token: str = "",
    since: str | None = None,
    lines: bool = False,
) -> None:
    gateway = chat.gateway
    if gateway.draining:
        # Scaling in: opened and closed at once with the code that sends the client to
        # another instance (a refused upgrade would look like a bad token to it).
        await websocket.accept()
        await websocket.close(RECONNECT, "the gateway is scaling in: reconnect")
        return
    try:
        check_room(room)
        check_tenant(tenant)
        if since is not None:
            check_id(since, "since")
    except Invalid as exc:
        await websocket.close(POLICY_VIOLATION, str(exc)[:120])
        return
    principal = await chat.authenticate(tenant, token) if token else None
    if principal is None:
        await websocket.close(POLICY_VIOLATION, "not authenticated")
        return
    member = Member(tenant, str(principal.user_id), principal.username, principal.session_id)
    most = chat.max_sockets_per_user
    if chat.gateway.manager.sockets_of(member.tenant, member.user_id) >= most:
        await websocket.close(POLICY_VIOLATION, f"at most {most} sockets per user")
        return
    client = ConnectedClient(
        member, room, websocket.send_text, websocket.close, token=token, lines=lines
    )
    if since is not None:
        client.hold()
    # Join before accepting: once the client sees its socket open, the room's binding is in
    # place, so a message sent right after by anyone, on any instance, reaches it.
    if not await gateway.manager.join(client):
        await websocket.accept()
        await websocket.close(TRY_AGAIN, "the room is not available now: try again")
        return
    pump: asyncio.Task[None] | None = None
    # The socket lives no longer than the session it was opened with.
    lifetime = (principal.expires_at - utcnow()).total_seconds()
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, lifetime), client.disconnect, SESSION_EXPIRED, "session expired"
    )
    recovery: asyncio.Task[int] | None = None
    try:
        await websocket.accept()
        pump = asyncio.create_task(client.pump())
        if since is not None:
            # Alongside the reader: a long gap replays at the socket's pace while the client
            # may already talk.
            recovery = asyncio.create_task(gateway.recover(client, since, chat.history))
            recovery.add_done_callback(lambda task: _recovered(task, client))
        reader = asyncio.create_task(_read(websocket, client, gateway))
        await asyncio.wait([reader, pump], return_when=asyncio.FIRST_COMPLETED)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await reader
    finally:
        expiry.cancel()
        gateway.manager.leave(client)
        client.disconnect(1000, "")
        if recovery is not None:
            recovery.cancel()
            with contextlib.suppress(BaseException):
                await recovery
        if pump is not None:
            with contextlib.suppress(Exception):
                await pump


def _recovered(task: asyncio.Task[int], client: ConnectedClient) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("recovery for %s failed: %s", client.member.username, task.exception())
        client.disconnect(TRY_AGAIN, "recovery failed: reconnect with since")


async def _read(websocket: WebSocket, client: ConnectedClient, gateway: Gateway) -> None:
    """Read the client's frames until it goes; publish each valid message, answer the rest.

    Up to :data:`SEND_WINDOW` of the client's messages wait for their confirms at once (in
    order: the gateway publishes them as they are read); the next frame is read while they
    do, so a socket's pace is not one durable confirm per message."""
    limit = RateLimit(RATE, BURST)
    loop = asyncio.get_running_loop()
    sending: collections.deque[asyncio.Future[PublishResult]] = collections.deque()
    try:
        while True:
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            raw = event.get("text")
            if raw is None:
                client.send_now(error_frame("text frames only"))
                continue
            try:
                text = parse_client_frame(raw)
            except FrameError as exc:
                client.send_now(error_frame(str(exc)))
                continue
            if not limit.allow(loop.time()):
                client.send_now(error_frame(f"rate limit: at most {RATE:g} messages a second"))
                continue
            sending.append(gateway.submit(client, text))
            while sending and (sending[0].done() or len(sending) >= SEND_WINDOW):
                await _sent(sending.popleft(), client)
    finally:
        for future in sending:  # the client is gone: the messages still go, unanswered
            future.add_done_callback(_unanswered)


async def _sent(future: asyncio.Future[PublishResult], client: ConnectedClient) -> None:
    """Tell the client if its message was not sent."""
    try:
        result = await future
    except RabbitryError:  # the broker refused it and the outbox could not store it either
        log.exception("a chat message of %s was lost to the client", client.member.username)
        client.send_now(error_frame("message not sent: try again"))
        return
    if result.status is PublishStatus.FAILED:
        client.send_now(error_frame("message not sent: the broker is unavailable"))


def _unanswered(future: asyncio.Future[PublishResult]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a chat message was not sent: %s", future.exception())


@router.get("/api/chat/rooms/{room}/messages")
async def room_messages(
    request: Request,
    room: str,
    tenant: Annotated[str, Query(min_length=1, max_length=63)],
    chat: ChatDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    before: str | None = None,
) -> dict[str, Any]:
    """A page of the room's history, newest first; ``next_before`` continues it."""
    check_room(room)
    check_tenant(tenant)
    if before is not None:
        check_id(before, "before")
    token = bearer_token(request)
    if token is None:
        raise HTTPException(401, "a bearer session token is required")
    if await chat.authenticate(tenant, token) is None:
        raise HTTPException(401, "invalid or expired session token")
    page = await chat.history.page(tenant, room, limit=limit, before=before)
    return {
        "room": room,
        "messages": [message.frame() for message in page],
        "next_before": page[-1].id if len(page) == limit else None,
    }


_PAGE = resources.files("rabbitry.chat").joinpath("static/chat.html").read_text("utf-8")


def _inline_hash(page: str, tag: str) -> str:
    body = page.split(f"<{tag}>", 1)[1].split(f"</{tag}>", 1)[0]
    digest = hashlib.sha256(body.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# The back-office's rules: only this page's own script and style run (by their hashes, so an
# injected one could not), it talks to its own origin only, and no site may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_inline_hash(_PAGE, 'script')}; "
        f"style-src {_inline_hash(_PAGE, 'style')}; connect-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@router.get("/chat/", response_class=HTMLResponse, include_in_schema=False)
async def chat_page() -> HTMLResponse:
    """The chat page: log in, pick a room, talk (static: it renders nothing from the user)."""
    return HTMLResponse(_PAGE, headers=PAGE_HEADERS)
