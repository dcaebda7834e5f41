"""Session tokens: 256 random bits, bound to their tenant, stored only as a SHA-256 hash.

A token reads ``<tenant>.<43 base64url characters>``. The tenant prefix binds it: a token is
looked up only in its own tenant's sessions, so presenting tenant A's token on tenant B's route
finds nothing. The stores keep ``sha256(token)``; a stolen database gives no usable token, and a
hash is safe to index (no secret left to compare slowly). Pure, no I/O.
"""

from __future__ import annotations

import hashlib
import re
import secrets

TOKEN_BYTES = 32  # 256 bits
# A tenant name, as everywhere (API, store, broker names): a letter or digit, then up to 62
# letters, digits or '-'. It starts with neither '-' nor '_' because broker names built from it
# must (rabbitry.messaging.settings.NAME_PATTERN).
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_TOKEN = re.compile(r"^(?P<tenant>[a-z0-9][a-z0-9-]{0,62})\.(?P<secret>[A-Za-z0-9_-]{43})$")


def new_token(tenant: str) -> str:
    """A fresh token for ``tenant`` (an already validated tenant name)."""
    return f"{tenant}.{secrets.token_urlsafe(TOKEN_BYTES)}"


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token: what the stores and the cache keep."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_tenant(token: str) -> str | None:
    """The tenant a well-formed token belongs to, or ``None`` for anything else."""
    match = _TOKEN.fullmatch(token)
    return match.group("tenant") if match else None


def new_session_id() -> str:
    """A session id: random and public (admins list and delete sessions by it)."""
    return secrets.token_hex(16)
