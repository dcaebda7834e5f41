"""HTTP routers of the sessions part: ``user`` (USER) and ``session`` (SESSION) servers.

USER (admin token): ``POST /api/tenants`` {name} → 201 · ``POST /api/tenants/{t}/users``
{username, password} → 201 {id} · ``DELETE /api/tenants/{t}/users/{id}`` → 202 (404: no
such user) · ``GET /api/tenants`` and ``GET /api/tenants/{t}/users`` → one page
``{items, next}`` (``?limit=`` up to 500, ``?after=`` the previous page's ``next``).

SESSION: ``POST /api/tenants/{t}/sessions`` {username, password} → 201 {session_id, token} (no
credential; 401 for a wrong password or an unknown user alike, 429 when throttled) ·
``GET /api/tenants/{t}/sessions/me`` and ``DELETE .../sessions/me`` (the user's own token) ·
``GET /api/tenants/{t}/users/{id}/sessions`` (admin) · ``DELETE /api/tenants/{t}/sessions/{sid}``
and ``POST /api/tenants/{t}/sessions/revocations`` {session_ids} (admin or service token).
Deleting is idempotent: a session that is gone already answers ``{"removed": 0}``.

Errors travel as the error tree (``NotFound`` 404, ``Conflict`` 409, ``Invalid`` 400): the app
maps them to statuses (:func:`rabbitry.web.status_of`).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, SecretStr

from rabbitry.config import Settings
from rabbitry.errors import NotFound
from rabbitry.sessions.auth import Manager, RevokerDep, TenantPath, UserDep
from rabbitry.sessions.backends import open_manager
from rabbitry.sessions.manager import LoginStatus, SessionManager
from rabbitry.sessions.removal import UserRemoval
from rabbitry.sessions.tenants import Tenants, declare_tenant
from rabbitry.sessions.tokens import TENANT_PATTERN
from rabbitry.sessions.users import MAX_PASSWORD, MAX_USERNAME
from rabbitry.web import (
    AdminDep,
    AppState,
    DatabaseDep,
    Process,
    PublisherDep,
    SettingsDep,
    with_admin_token,
)

user_router = APIRouter(prefix="/api/tenants", tags=["users"])
session_router = APIRouter(prefix="/api/tenants", tags=["sessions"])

UserIdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]
SessionIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
MAX_PAGE = 500
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Items per page.")]
PageAfter = Annotated[
    int, Query(ge=0, le=2**63 - 1, description="The previous page's next (0: from the start).")
]


class TenantIn(BaseModel):
    name: str = Field(pattern=TENANT_PATTERN)


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=MAX_USERNAME)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)


class SessionIds(BaseModel):
    session_ids: list[Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]] = Field(max_length=10_000)


def prepare(settings: Settings, process: Process) -> Settings:
    """The admin token the routes take; and under ``up``, where DISPATCH calls this very
    process's SESSION routes, the service token (generated for the process when none is
    configured, never printed: nothing outside needs it) and the process's URL."""
    settings = with_admin_token(settings)
    if process.mode != "up":
        return settings
    update: dict[str, object] = {}
    if settings.service_token is None:
        update["service_token"] = SecretStr(secrets.token_urlsafe(32))
    if settings.session_url is None:
        update["session_url"] = process.url
    return settings.model_copy(update=update) if update else settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The part's per-process resources: the session manager over the configured store and
    cache, also the app's judge of user tokens (403 rather than 401 on admin routes)."""
    state = AppState.of(app)
    assert state.database is not None and state.publisher is not None  # the app's lifespan's
    async with open_manager(state.settings, state.database, publisher=state.publisher) as manager:
        state.put(SessionManager, manager)
        state.user_tokens = manager
        yield


async def _tenant_exists(database: DatabaseDep, tenant: TenantPath) -> None:
    if not await Tenants(database).exists(tenant):
        raise NotFound(f"no tenant {tenant!r}")


TenantExists = Annotated[None, Depends(_tenant_exists)]


# --- USER ----------------------------------------------------------------------------------


@user_router.post("", status_code=201)
async def create_tenant(
    body: TenantIn, settings: SettingsDep, database: DatabaseDep, _: AdminDep
) -> dict[str, Any]:
    """Create a tenant and declare its removal queue."""
    tenant = await Tenants(database).create(body.name)
    declared = await declare_tenant(settings, tenant.name)
    return {"name": tenant.name, "queue_declared": declared}


@user_router.get("")
async def list_tenants(
    database: DatabaseDep, _: AdminDep, limit: PageLimit = 100, after: PageAfter = 0
) -> dict[str, Any]:
    """One page of tenants, by id; ``next`` is the ``after`` of the next page (null: last)."""
    found = await Tenants(database).page(after, limit + 1)
    return {
        "tenants": [{"id": t.id, "name": t.name} for t in found[:limit]],
        "next": found[limit - 1].id if len(found) > limit else None,
    }


@user_router.get("/{tenant}/users")
async def list_users(
    tenant: TenantPath,
    manager: Manager,
    _: AdminDep,
    __: TenantExists,
    limit: PageLimit = 100,
    after: PageAfter = 0,
) -> dict[str, Any]:
    """One page of the tenant's users, by id (never a password hash)."""
    found = await manager.users.page(tenant, after, limit + 1)
    return {
        "users": [{"id": u.id, "username": u.username} for u in found[:limit]],
        "next": found[limit - 1].id if len(found) > limit else None,
    }


@user_router.post("/{tenant}/users", status_code=201)
async def create_user(
    tenant: TenantPath, body: Credentials, manager: Manager, _: AdminDep
) -> dict[str, Any]:
    user = await manager.users.create(tenant, body.username, body.password)
    return {"id": user.id, "tenant": tenant, "username": user.username}


@user_router.delete("/{tenant}/users/{user_id}", status_code=202)
async def remove_user(
    tenant: TenantPath,
    user_id: UserIdPath,
    manager: Manager,
    settings: SettingsDep,
    publisher: PublisherDep,
    _: AdminDep,
    __: TenantExists,
) -> dict[str, Any]:
    """Remove the user and enqueue the removal of their sessions; does not wait for it. 404
    when there is no such user."""
    receipt = await UserRemoval(settings, manager.users, publisher).remove(tenant, user_id)
    # The user row is gone, so no cache miss authenticates their tokens any more; evicting
    # what this process can reach makes the cache hits stop at once too.
    await manager.forget_user(tenant, user_id)
    if not receipt.removed:
        # The removal of their sessions was requested all the same: a DELETE repeated after
        # one that removed the user but could not request that (a 5xx) still finishes it.
        raise NotFound(f"no user {user_id} in tenant {tenant!r}")
    return receipt.to_json()


# --- SESSION -------------------------------------------------------------------------------


@session_router.post("/{tenant}/sessions", status_code=201, response_model=None)
async def login(
    request: Request, tenant: TenantPath, body: Credentials, manager: Manager, settings: SettingsDep
) -> Any:
    client = request.client.host if request.client is not None else ""
    result = await manager.login(tenant, body.username, body.password, client=client)
    if result.status is LoginStatus.THROTTLED:
        lockout = settings.login_lockout
        return JSONResponse(
            {"error": "too many failed logins; try again later"},
            status_code=429,
            headers={"Retry-After": str(max(1, round(lockout)))},
        )
    if result.status is LoginStatus.REFUSED or result.session is None:
        raise HTTPException(401, "wrong username or password")
    return {
        "session_id": result.session.id,
        "token": result.token,
        "expires_at": result.session.expires_at.isoformat(),
    }


@session_router.get("/{tenant}/sessions/me")
async def me(principal: UserDep) -> dict[str, Any]:
    return {
        "tenant": principal.tenant,
        "user_id": principal.user_id,
        "username": principal.username,
        "session_id": principal.session_id,
        "expires_at": principal.expires_at.isoformat(),
    }


@session_router.delete("/{tenant}/sessions/me")
async def logout(principal: UserDep, manager: Manager) -> dict[str, Any]:
    removed = await manager.revoke(principal.tenant, [principal.session_id])
    return {"removed": len(removed)}


@session_router.get("/{tenant}/users/{user_id}/sessions")
async def user_sessions(
    tenant: TenantPath, user_id: UserIdPath, manager: Manager, _: AdminDep, __: TenantExists
) -> dict[str, Any]:
    records = await manager.sessions_of(tenant, user_id)
    return {"tenant": tenant, "user_id": user_id, "sessions": [r.public() for r in records]}


@session_router.delete("/{tenant}/sessions/{session_id}")
async def delete_session(
    tenant: TenantPath, session_id: SessionIdPath, manager: Manager, _: RevokerDep
) -> dict[str, Any]:
    removed = await manager.revoke_one(tenant, session_id)
    return {"removed": int(removed)}


@session_router.post("/{tenant}/sessions/revocations")
async def delete_sessions(
    tenant: TenantPath, manager: Manager, _: RevokerDep, body: Annotated[SessionIds, Body()]
) -> dict[str, Any]:
    """Batch form of the DELETE above (what DISPATCH uses when it finds this route)."""
    removed = await manager.revoke(tenant, body.session_ids)
    return {"removed": len(removed)}
