"""Who may call the sessions part's routes.

* the **admin** bearer token (``RABBITRY_ADMIN_TOKEN``): tenants, users, listing and deleting
  sessions (:data:`AdminDep`, from :mod:`rabbitry.web`);
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

from rabbitry.sessions.manager import Principal, SessionManager
from rabbitry.sessions.tokens import TENANT_PATTERN
from rabbitry.web import (
    bearer_token,
    get_settings,
    is_admin,
    refuse,
    resource,
    same_secret,
    unauthorized,
)

TenantPath = Annotated[str, Path(pattern=TENANT_PATTERN, description="a tenant name")]

manager_of = resource(SessionManager)
"""The app's :class:`SessionManager` (the part's lifespan puts it on the app's state)."""


async def _manager(request: Request) -> SessionManager:
    # An async provider: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
    # hop on every request (1,000 of them for DISPATCH removing one user's sessions one by one).
    return manager_of(request)


Manager = Annotated[SessionManager, Depends(_manager)]


def _is_service(request: Request, token: str) -> bool:
    service = get_settings(request).service_token
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
