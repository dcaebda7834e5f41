"""What every part's HTTP routes share: the app's typed state with its ``Depends`` providers,
bearer credentials, and the HTTP status of each error of the :mod:`rabbitry.errors` tree.

**State.** The app (``rabbitry.app.http.create_app``) keeps one :class:`AppState` on
``app.state``: the settings, and once its lifespan runs, the database and the publisher; each
part's lifespan adds its own per-process resources with :meth:`AppState.put`. A route takes
them as parameters::

    async def route(database: DatabaseDep, manager: Annotated[SessionManager,
                    Depends(resource(SessionManager))]) -> ...

**Credentials.** ``Authorization: Bearer <token>``. :func:`require_admin` (:data:`AdminDep`)
admits the admin token (``RABBITRY_ADMIN_TOKEN``, compared in constant time) and answers 401 to
a missing or unknown token, 403 to a valid user session token (authenticated, but not an
admin). Telling a user token from garbage needs the session store: a part that has one
(sessions) sets :attr:`AppState.user_tokens`; an app without it (``rabbitry serve events``
alone) answers 401.

**Errors.** A route raises from the error tree and lets it go: the app answers
``{"error": message}`` with the status :func:`status_of` gives (``NotFound`` 404, ``Conflict``
409, ``Invalid`` 400, the broker or the database unavailable 503, …).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, TypeVar, cast

from fastapi import Depends, HTTPException
from pydantic import SecretStr
from starlette.requests import HTTPConnection

from rabbitry.config import Settings
from rabbitry.errors import (
    BrokerError,
    ConfigError,
    Conflict,
    Invalid,
    MessageError,
    NotFound,
    RabbitryError,
    Refused,
    StorageError,
)
from rabbitry.messaging.publisher import Publisher
from rabbitry.storage import Database

if TYPE_CHECKING:
    import asyncio

    from rabbitry.messaging.topology import Topology
    from rabbitry.storage.listing import EntityPages

T = TypeVar("T")

SystemTopology = Callable[[Settings, Iterable[str]], "Topology"]


@dataclass(frozen=True, slots=True)
class Process:
    """The HTTP process a part is served in: ``rabbitry up`` (every part) or ``rabbitry serve
    NAME`` (one part's server), listening on ``url``; what a part's ``prepare`` hook sees."""

    mode: Literal["up", "serve"]
    url: str


class UserTokens(Protocol):
    async def is_user_token(self, token: str) -> bool:
        """Whether ``token`` is a live session token (of whatever tenant)."""


class Readiness(Protocol):
    """What a part sees of the process's health: it reports a link of its own to ``/readyz``."""

    def report(self, name: str, state: Callable[[], str]) -> None: ...


@dataclass(slots=True)
class AppState:
    """The app's per-process state, typed: what its routes and part lifespans share."""

    settings: Settings
    topology: SystemTopology | None = None  # the whole system's, for the back-office dashboard
    database: Database | None = None  # set by the app's lifespan
    publisher: Publisher | None = None  # set by the app's lifespan
    stopping: asyncio.Event | None = None  # set when the process stops (the lifespan's)
    user_tokens: UserTokens | None = None  # set by the sessions part, when served
    # The parts' entity pages (their registry entries'), loaded when a back-office page asks.
    entity_pages: Callable[[], Sequence[EntityPages]] = tuple
    # The process's health (/livez, /readyz): a part reports its own links to it.
    health: Readiness | None = None
    # Parts' goodbyes the server runs before it drops its connections (see app/server.py).
    before_shutdown: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    _resources: dict[type, object] = field(default_factory=dict)
    _pages: dict[str, EntityPages] | None = None

    @staticmethod
    def of(app: Any) -> AppState:
        """The state of ``app`` (a Starlette app built by ``create_app``)."""
        state = getattr(app.state, "rabbitry", None)
        if not isinstance(state, AppState):
            raise RuntimeError("the app has no Rabbitry state: build it with create_app")
        return state

    def pages(self) -> Mapping[str, EntityPages]:
        """The entity pages by kind (``/backoffice/entities/<kind>``), loaded once."""
        if self._pages is None:
            self._pages = {page.kind: page for page in self.entity_pages()}
        return self._pages

    def put(self, kind: type[T], value: T) -> None:
        """Keep a part's per-process resource (its lifespan's), found by its type."""
        self._resources[kind] = value

    def get(self, kind: type[T]) -> T:
        """The resource of type ``kind``, which the lifespan of a served part put there."""
        try:
            return cast(T, self._resources[kind])
        except KeyError:
            raise RuntimeError(
                f"no {kind.__name__} in the app's state: the lifespan of its part did not run"
            ) from None

    def find(self, kind: type[T]) -> T | None:
        """The resource of type ``kind``, or ``None`` when no served part provides it."""
        return cast("T | None", self._resources.get(kind))


def app_state(connection: HTTPConnection) -> AppState:
    """The state of the app serving this request or WebSocket."""
    return AppState.of(connection.app)


def get_settings(connection: HTTPConnection) -> Settings:
    return app_state(connection).settings


def get_database(connection: HTTPConnection) -> Database:
    database = app_state(connection).database
    if database is None:
        raise RuntimeError("the app's database is not open: its lifespan did not run")
    return database


def get_publisher(connection: HTTPConnection) -> Publisher:
    publisher = app_state(connection).publisher
    if publisher is None:
        raise RuntimeError("the app's publisher is not open: its lifespan did not run")
    return publisher


def resource(kind: type[T]) -> Callable[[HTTPConnection], T]:
    """A ``Depends`` provider of a part's resource: ``Depends(resource(SessionManager))``."""

    def provide(connection: HTTPConnection) -> T:
        return app_state(connection).get(kind)

    return provide


StateDep = Annotated[AppState, Depends(app_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]


# --- errors ---------------------------------------------------------------------------------

# Most specific first: the first class an error is an instance of gives its status.
_STATUS: tuple[tuple[type[RabbitryError], int], ...] = (
    (Invalid, 400),
    (MessageError, 400),
    (Refused, 403),
    (NotFound, 404),
    (Conflict, 409),
    (BrokerError, 503),
    (StorageError, 503),
    (ConfigError, 500),
)


def status_of(error: RabbitryError) -> int:
    """The HTTP status answering ``error``: 4xx for what the caller asked, 503 for a broker
    or database that cannot do it now, 500 otherwise."""
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return 500


# --- credentials ----------------------------------------------------------------------------


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or ``None``."""
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def is_admin(connection: HTTPConnection, token: str) -> bool:
    admin = get_settings(connection).admin_token
    return admin is not None and same_secret(token, admin.get_secret_value())


async def refuse(connection: HTTPConnection, token: str) -> HTTPException:
    """The error for a token that may not use this route: 403 for a user's, else 401."""
    users = app_state(connection).user_tokens
    if users is not None and await users.is_user_token(token):
        return HTTPException(403, "this route needs the admin token, not a user's")
    return unauthorized("invalid bearer token")


async def require_admin(connection: HTTPConnection) -> None:
    """A route dependency: only the admin token gets through."""
    token = bearer_token(connection)
    if token is None:
        raise unauthorized("missing bearer token")
    if not is_admin(connection, token):
        raise await refuse(connection, token)


AdminDep = Annotated[None, Depends(require_admin)]


ADMIN_TOKEN_FILE = "admin-token"
"""Where, under ``data_dir``, a generated admin token is kept (mode 0600)."""


def with_admin_token(settings: Settings, _: Process | None = None) -> Settings:
    """The settings with an admin token: when none is configured, the one kept in
    ``<data_dir>/admin-token``, or one generated now, kept there and told to the operator once
    (the :data:`~rabbitry.app.registry.Prepare` hook of every part whose routes take the admin
    token). Kept, it survives a restart: the back-office's logins are signed with a key
    derived from it, and a new token at every start would log everybody out. Production
    refuses to start without ``RABBITRY_ADMIN_TOKEN`` before this runs."""
    if settings.admin_token is not None:
        return settings
    path = settings.data_dir / ADMIN_TOKEN_FILE
    token = _read_token(path)
    if token is not None:
        print(
            f"rabbitry: admin token from {path} (set RABBITRY_ADMIN_TOKEN to fix it)",
            file=sys.stderr,
        )
    else:
        token = secrets.token_urlsafe(24)
        kept = _keep_token(path, token)
        token = (_read_token(path) or token) if kept else token  # another process's, if it won
        where = f"kept in {path}" if kept else f"not kept: cannot write {path}"
        print(
            f"rabbitry: generated admin token ({where}; set RABBITRY_ADMIN_TOKEN to fix it): "
            f"{token}",
            file=sys.stderr,
        )
    return settings.model_copy(update={"admin_token": SecretStr(token)})


def _read_token(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    # What _keep_token writes; anything else (empty, edited, truncated) is replaced.
    return token if len(token) >= 16 and token.isprintable() and " " not in token else None


def _keep_token(path: Path, token: str) -> bool:
    """Write ``token`` to ``path`` (0600) unless a valid one is there; whether ``path`` holds
    a token now. Two processes starting together (``serve user`` beside ``serve backoffice``)
    end with the same one: the file appears whole or not at all (a hard link of a finished
    temporary file), and the loser reads the winner's."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        if _read_token(path) is None:
            path.unlink(missing_ok=True)  # an invalid one: replaced
        with contextlib.suppress(FileExistsError):  # another process kept its token first
            os.link(temporary, path)
        return True
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):  # not there, or its directory could not be made
            temporary.unlink(missing_ok=True)
