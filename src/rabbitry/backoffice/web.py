"""What every back-office page shares: templates (autoescaped), the operator's session, CSRF
checks on POST, form parsing, security headers and the static files.

A page takes ``ctx: Operator`` (a logged-in operator's request), an action ``posted: Action``
(its context and form, once the CSRF token checked out). Without a logged-in session they
raise :class:`LoginRequired`; the back-office's routes (:class:`PageRoute`) answer it with the
way to the login page, and answer an error of the :mod:`rabbitry.errors` tree a handler lets
go with ``{"error": ...}``, its status (:func:`rabbitry.web.status_of`) and the pages'
security headers.
"""

from __future__ import annotations

import datetime as dt
import json
import mimetypes
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined

from rabbitry.backoffice.auth import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    LIFETIME,
    Session,
    Signer,
)
from rabbitry.backoffice.logouts import Logouts
from rabbitry.config import Settings
from rabbitry.errors import RabbitryError
from rabbitry.messaging.publisher import Publisher
from rabbitry.storage import Database
from rabbitry.web import AppState, app_state, get_database, get_publisher, status_of

PREFIX = "/backoffice"
MAX_FORM = 1_000_000  # bytes

# Scripts and styles from our own origin only: a value that slipped through escaping still
# could not run. No frames (clickjacking), forms post to ourselves only.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_templates = Environment(
    loader=PackageLoader("rabbitry.backoffice", "templates"),
    autoescape=True,  # every value, whatever the template's name
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def local_time(value: dt.datetime | None) -> str:
    """A time in the server's local zone, as the filters read dates."""
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def cell(value: Any) -> str:
    """A table cell: times in local time, nothing for None."""
    if value is None:
        return ""
    return local_time(value) if isinstance(value, dt.datetime) else str(value)


_templates.filters["local"] = local_time
_templates.filters["cell"] = cell
_templates.filters["json"] = to_json
_STATIC = {
    entry.name: entry
    for entry in resources.files("rabbitry.backoffice").joinpath("static").iterdir()
    if entry.is_file() and not entry.name.endswith(".md")
}


@dataclass(slots=True)
class Ctx:
    """One request of a logged-in (or logging-in) operator."""

    request: Request
    session: Session
    signer: Signer
    fresh: bool  # the session is new: its cookie must be set

    @property
    def app(self) -> AppState:
        return AppState.of(self.request.app)

    @property
    def settings(self) -> Settings:
        return self.app.settings

    @property
    def database(self) -> Database:
        return get_database(self.request)

    @property
    def publisher(self) -> Publisher:
        return get_publisher(self.request)

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        page = _templates.get_template(template).render(
            csrf=self.signer.csrf(self.session),
            namespace=self.settings.namespace,
            mode=str(self.settings.manual_processing_mode),
            logged_in=self.session.auth,
            prefix=PREFIX,
            path=self.request.url.path,
            query=query_string,
            entity_pages=app_state(self.request).pages().values(),
            **values,
        )
        return self.finish(HTMLResponse(page, status_code=status))

    def redirect(self, path: str) -> Response:
        return self.finish(RedirectResponse(PREFIX + path, status_code=303))

    def to_login(self, htmx: bool = True) -> Response:
        if htmx and self.request.headers.get(
            "hx-request"
        ):  # an htmx fragment: the page itself goes
            return self.finish(
                Response(status_code=204, headers={"HX-Redirect": PREFIX + "/login"})
            )
        return self.redirect("/login")

    def finish(self, response: Response) -> Response:
        if self.fresh:
            set_cookie(response, self.signer, self.session, self.request)
        response.headers.update(_HEADERS)
        return response


def query_string(values: Mapping[str, Any], **changes: Any) -> str:
    """``values`` with ``changes`` as a query string (``None`` and ``""`` dropped)."""
    merged = {**values, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


class LoginRequired(Exception):
    """The request needs a logged-in operator; :class:`PageRoute` sends them to log in."""

    def __init__(self, ctx: Ctx, *, htmx: bool = True) -> None:
        super().__init__("login required")
        self.ctx = ctx
        self.htmx = htmx  # an htmx fragment is answered with HX-Redirect (pages, not actions)


class PageError(Exception):
    """A request the back-office refuses before its handler runs (a form too large, a wrong
    CSRF token): answered with ``status`` and ``message``, and the session cookie if new."""

    def __init__(self, status: int, message: str, ctx: Ctx | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.ctx = ctx


Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class PageRoute(APIRoute):
    """Every back-office route: what its handler (or a dependency) raises becomes a response
    here, with the pages' security headers, so that no handler repeats the translation."""

    def get_route_handler(self) -> Endpoint:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired as exc:
                return exc.ctx.to_login(exc.htmx)
            except PageError as exc:
                response = error(exc.status, str(exc))
                return exc.ctx.finish(response) if exc.ctx is not None else response
            except RabbitryError as exc:
                return error(status_of(exc), str(exc))

        return answer


def logouts_of(request: Request) -> Logouts:
    """The logouts of every back-office process on the app's database (this process
    remembers the ones it has seen)."""
    state = app_state(request)
    logouts = state.find(Logouts)
    if logouts is None:
        logouts = Logouts(get_database(request))
        state.put(Logouts, logouts)
    return logouts


async def context(request: Request) -> Ctx:
    """The request's context, with its session (a new anonymous one when it has none, or when
    its session was logged out, by this process or another)."""
    token = AppState.of(request.app).settings.admin_token
    if token is None:  # `rabbitry serve`/`up` always set one; an app built by hand may not
        raise RuntimeError("the back-office needs settings.admin_token")
    signer = Signer(token.get_secret_value())
    session = signer.load(request.cookies.get(COOKIE))
    if session is not None and await logouts_of(request).holds(session.sid):
        session = None
    if session is None:
        return Ctx(request, Session.anonymous(), signer, fresh=True)
    return Ctx(request, session, signer, fresh=False)


async def operator(request: Request) -> Ctx:
    """The logged-in operator's context; raises :class:`LoginRequired` for anyone else."""
    ctx = await context(request)
    if not ctx.session.auth:
        raise LoginRequired(ctx)
    return ctx


@dataclass(frozen=True, slots=True)
class Posted:
    """An action's context and its form."""

    ctx: Ctx
    form: dict[str, list[str]]

    def first(self, name: str, default: str = "") -> str:
        return first(self.form, name, default)


async def login_form(request: Request) -> Posted:
    """A form's context and fields, once its CSRF token checked out (logged in or not)."""
    ctx = await context(request)
    body = await request.body()
    if len(body) > MAX_FORM:
        raise PageError(413, "form too large")
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    given = request.headers.get(CSRF_HEADER) or first(form, CSRF_FIELD)
    if ctx.fresh or not ctx.signer.csrf_ok(ctx.session, given):
        raise PageError(403, "CSRF token missing or wrong: reload the page and retry", ctx)
    return Posted(ctx, form)


async def posted(request: Request) -> Posted:
    """An action's context and form: its CSRF token checked out and its session logged in."""
    got = await login_form(request)
    if not got.ctx.session.auth:
        raise LoginRequired(got.ctx, htmx=False)
    return got


Operator = Annotated[Ctx, Depends(operator)]
Action = Annotated[Posted, Depends(posted)]


def first(form: Mapping[str, list[str]], name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0].strip() if values else default


def error(status: int, message: str) -> JSONResponse:
    response = JSONResponse({"error": message}, status_code=status)
    response.headers.update(_HEADERS)
    return response


def set_cookie(response: Response, signer: Signer, session: Session, request: Request) -> None:
    response.set_cookie(
        COOKIE,
        signer.dump(session),
        max_age=LIFETIME,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def static_file(name: str) -> Response:
    entry = _STATIC.get(name)
    if entry is None:
        return error(404, "no such file")
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(
        entry.read_bytes(),
        media_type=kind,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
