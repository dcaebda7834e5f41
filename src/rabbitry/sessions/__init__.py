"""Multi-tenant session revocation: USER, SESSION and DISPATCH.

Removing a user removes every session of theirs, through the tenant's own queue, without the
admin waiting for it (``docs/sessions.md`` has the flow, step by step, and the HTTP API).

For other parts (the chat gateway authenticates WebSocket clients with session tokens):

.. code-block:: python

    from rabbitry.sessions import Principal, open_manager

    async with open_manager(settings, database, publisher=publisher) as sessions:
        principal = await sessions.authenticate(tenant, token)   # Principal | None
        # principal.tenant, .user_id, .username, .session_id, .expires_at

Inside ``rabbitry up`` / ``rabbitry serve session`` the app's own manager is on the app's
state (``AppState.of(app).find(SessionManager)``, or the route dependency
:data:`rabbitry.sessions.auth.Manager`), and FastAPI routes can depend on
:data:`rabbitry.sessions.auth.UserDep` to require a user token.

Learning of revocations: every revoked session is announced on the fanout exchange
``<ns>.sessions.revoked`` (``TenantsLayout(ns).revoked_exchange``, declared by the part's
topology) as a ``session.revoked`` message with body ``{"tenant", "user_id", "session_id"}`` and
an ``x-tenant`` header. Bind an exclusive queue to it (routing key ``""``) and close the
sockets of that session. Notices are not kept for absent listeners: after a reconnect, call
``authenticate`` again for every open socket (see :mod:`rabbitry.sessions.notices`).
"""

from pathlib import Path

from rabbitry.sessions.backends import open_manager
from rabbitry.sessions.manager import Principal, SessionManager
from rabbitry.sessions.notices import REVOKED
from rabbitry.sessions.tenants import Tenants, check_tenant
from rabbitry.sessions.throttle import MemoryLoginThrottle
from rabbitry.sessions.topology import TenantsLayout

MIGRATIONS = Path(__file__).with_name("migrations")
"""This part's Alembic revisions (a version location)."""

__all__ = [
    "MIGRATIONS",
    "REVOKED",
    "MemoryLoginThrottle",
    "Principal",
    "SessionManager",
    "Tenants",
    "TenantsLayout",
    "check_tenant",
    "open_manager",
]
