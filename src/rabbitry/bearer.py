"""Bearer credentials of Rabbitry's HTTP APIs, for every part's routers.

``Authorization: Bearer <token>``. :func:`require_admin` admits the admin token
(``RABBITRY_ADMIN_TOKEN``, compared in constant time) and answers 401 to a missing or unknown
token, 403 to a valid user session token (authenticated, but not an admin). Telling a user token
from garbage needs the session store: a part that has one (sessions) puts a :class:`UserTokens`
on ``app.state.user_tokens``; an app without it (``rabbitry serve events`` alone) answers 401.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Protocol

from fastapi import Depends, HTTPException, Request

from rabbitry.config import Settings


class UserTokens(Protocol):
    async def is_user_token(self, token: str) -> bool:
        """Whether ``token`` is a live session token (of whatever tenant)."""


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or ``None``."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def app_settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    if not isinstance(settings, Settings):
        raise RuntimeError("app.state.settings is not set: build the app with create_app")
    return settings


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def is_admin(request: Request, token: str) -> bool:
    admin = app_settings(request).admin_token
    return admin is not None and same_secret(token, admin.get_secret_value())


async def refuse(request: Request, token: str) -> HTTPException:
    """The error for a token that may not use this route: 403 for a user's, else 401."""
    users: UserTokens | None = getattr(request.app.state, "user_tokens", None)
    if users is not None and await users.is_user_token(token):
        return HTTPException(403, "this route needs the admin token, not a user's")
    return unauthorized("invalid bearer token")


async def require_admin(request: Request) -> None:
    """A route dependency: only the admin token gets through."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized("missing bearer token")
    if not is_admin(request, token):
        raise await refuse(request, token)


Admin = Annotated[None, Depends(require_admin)]
