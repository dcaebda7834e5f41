"""Who may use the back-office: a login with the admin credential, a signed session cookie and a
CSRF token on every POST.

The cookie holds ``{sid, auth, exp}`` signed with HMAC-SHA256 under a key derived from the admin
token, so every back-office process with the same token accepts it, and changing the token ends
every session. It is ``HttpOnly`` (no script reads it) and ``SameSite=Strict`` (no other site's
page sends it). The CSRF token is an HMAC of the session id under the same key, carried in a
hidden field of every form and in the ``X-CSRF-Token`` header of every htmx request; a POST
without it is refused (403) whatever its cookie says. Logging in starts a new session id, so a
session planted before login is worthless after it. Logging out records the session in the
database until the cookie would have expired anyway (:mod:`rabbitry.backoffice.logouts`), so a
copy of the cookie is worthless after it, on every back-office process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

COOKIE = "rabbitry_backoffice"
LIFETIME = 8 * 3600  # seconds a session lasts
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Session:
    sid: str
    auth: bool
    expires: int

    @classmethod
    def anonymous(cls, now: float | None = None) -> Session:
        return cls(secrets.token_urlsafe(18), False, int((now or time.time()) + LIFETIME))

    def logged_in(self, now: float | None = None) -> Session:
        """A new session (a new id) for the user who just proved the credential."""
        return Session(secrets.token_urlsafe(18), True, int((now or time.time()) + LIFETIME))


class Signer:
    """Signs and checks session cookies and CSRF tokens. Pure: no I/O."""

    def __init__(self, admin_token: str) -> None:
        if not admin_token.strip():  # an empty key signs nothing; an empty field is no login
            raise ValueError("the back-office needs a non-empty admin token")
        self._admin = admin_token
        self._key = hmac.new(b"rabbitry-backoffice-v1", admin_token.encode(), "sha256").digest()

    def credential_ok(self, given: str) -> bool:
        """Whether ``given`` is the admin token (constant time)."""
        return bool(given) and hmac.compare_digest(
            given.encode("utf-8"), self._admin.encode("utf-8")
        )

    def dump(self, session: Session) -> str:
        body = json.dumps({"sid": session.sid, "auth": session.auth, "exp": session.expires})
        data = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{data}.{self._mac('session', data)}"

    def load(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session in ``cookie`` if it is ours and not expired, else ``None``."""
        if not cookie or len(cookie) > 512 or "." not in cookie:
            return None
        data, _, mac = cookie.rpartition(".")
        if not hmac.compare_digest(mac, self._mac("session", data)):
            return None
        try:
            values = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
            session = Session(str(values["sid"]), values["auth"] is True, int(values["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > (now or time.time()) else None

    def csrf(self, session: Session) -> str:
        return self._mac("csrf", session.sid)

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given, self.csrf(session))

    def _mac(self, purpose: str, value: str) -> str:
        digest = hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Revoked:
    """Session ids logged out before their cookie expired, each kept until then; at most
    ``cap`` of them (the ones expiring first go first). Pure: no I/O. A process's memory of
    the logouts it has seen; the database holds them all (``Logouts``)."""

    def __init__(self, cap: int = 100_000) -> None:
        self._cap = cap
        self._until: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._until)

    def add(self, session: Session, now: float | None = None) -> None:
        self._expire(now or time.time())
        self._until[session.sid] = session.expires
        if len(self._until) > self._cap:
            self._until.popitem(last=False)

    def __contains__(self, sid: object) -> bool:
        return sid in self._until

    def _expire(self, now: float) -> None:
        # Every cookie lives LIFETIME: insertion order is expiry order.
        while self._until:
            sid, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[sid]
