"""Who may call the sessions part's routes.

* the **admin** bearer token (``RABBITRY_ADMIN_TOKEN``): tenants, users, listing and deleting
  sessions (:data:`AdminDep`, from :mod:`rabbitry.bearer`);
* the **service** token (``RABBITRY_SERVICE_TOKEN``): DISPATCH's credential towards SESSION, good
  for deleting sessions and nothing else (:data:`RevokerDep` admits it or the admin);
* a **user** session token: ``sessions/me`` only (:data:`UserDep`), and only on its own tenant's
  route.

401 for a missing or unknown token, 403 for a valid token on a route that is not its own. Every
secret is compared in constant time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request

from rabbitry.bearer import (
    Admin,
    app_settings,
    bearer_token,
    is_admin,
    refuse,
    same_secret,
    unauthorized,
)
from rabbitry.sessions.manager import Principal, SessionManager
from rabbitry.sessions.tokens import TENANT_PATTERN

TenantPath = Annotated[str, Path(pattern=TENANT_PATTERN, description="a tenant name")]

AdminDep = Admin


def manager_of(request: Request) -> SessionManager:
    """The app's :class:`SessionManager` (``app.state.sessions``, set by the part's lifespan)."""
    manager = getattr(request.app.state, "sessions", None)
    if not isinstance(manager, SessionManager):
        raise RuntimeError("app.state.sessions is not set: the sessions lifespan did not run")
    return manager


Manager = Annotated[SessionManager, Depends(manager_of)]


def _is_service(request: Request, token: str) -> bool:
    service = app_settings(request).service_token
    return service is not None and same_secret(token, service.get_secret_value())


async def require_revoker(request: Request) -> None:
    """The admin or the service token (DISPATCH removing sessions)."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized("missing bearer token")
    if not (is_admin(request, token) or _is_service(request, token)):
        raise await refuse(request, token)


async def require_user(request: Request, tenant: TenantPath) -> Principal:
    """A live session token of ``tenant``: its principal."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized("missing bearer token")
    principal = await manager_of(request).authenticate(tenant, token)
    if principal is None:
        if is_admin(request, token) or _is_service(request, token):
            raise HTTPException(403, "this route needs a user's session token")
        raise unauthorized("invalid or expired session token")
    return principal


RevokerDep = Annotated[None, Depends(require_revoker)]
UserDep = Annotated[Principal, Depends(require_user)]
