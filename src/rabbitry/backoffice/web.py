"""What every back-office page shares: templates (autoescaped), the operator's session, CSRF
checks on POST, form parsing, security headers and the static files.

A handler starts with ``ctx = await operator(request)`` (a page) or ``ctx, form = await
posted(request)`` (an action); either hands back a :class:`Response` instead (the login page,
a 403) that the handler returns as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import mimetypes
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined

from rabbitry.backoffice.auth import (
    COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    LIFETIME,
    Revoked,
    Session,
    Signer,
)
from rabbitry.config import Settings
from rabbitry.messaging.publisher import Publisher
from rabbitry.storage import Database

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
    def settings(self) -> Settings:
        settings: Settings = self.request.app.state.settings
        return settings

    @property
    def database(self) -> Database:
        database: Database = self.request.app.state.database
        return database

    @property
    def publisher(self) -> Publisher:
        publisher: Publisher = self.request.app.state.publisher
        return publisher

    @property
    def state(self) -> Any:
        return self.request.app.state

    def render(self, template: str, status: int = 200, **values: Any) -> Response:
        page = _templates.get_template(template).render(
            csrf=self.signer.csrf(self.session),
            namespace=self.settings.namespace,
            mode=str(self.settings.manual_processing_mode),
            logged_in=self.session.auth,
            prefix=PREFIX,
            path=self.request.url.path,
            query=query_string,
            entity_pages=getattr(self.request.state, "entity_pages", {}).values(),
            **values,
        )
        return self.finish(HTMLResponse(page, status_code=status))

    def redirect(self, path: str) -> Response:
        return self.finish(RedirectResponse(PREFIX + path, status_code=303))

    def finish(self, response: Response) -> Response:
        if self.fresh:
            set_cookie(response, self.signer, self.session, self.request)
        response.headers.update(_HEADERS)
        return response


def query_string(values: Mapping[str, Any], **changes: Any) -> str:
    """``values`` with ``changes`` as a query string (``None`` and ``""`` dropped)."""
    merged = {**values, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def signer_of(request: Request) -> Signer:
    state = request.app.state
    signer = getattr(state, "backoffice_signer", None)
    if signer is None:
        token = state.settings.admin_token
        if token is None:  # `rabbitry serve`/`up` always set one; an app built by hand may not
            raise RuntimeError("the back-office needs settings.admin_token")
        signer = state.backoffice_signer = Signer(token.get_secret_value())
    assert isinstance(signer, Signer)
    return signer


def revoked_of(request: Request) -> Revoked:
    state = request.app.state
    revoked = getattr(state, "backoffice_revoked", None)
    if revoked is None:
        revoked = state.backoffice_revoked = Revoked()
    assert isinstance(revoked, Revoked)
    return revoked


def context(request: Request) -> Ctx:
    signer = signer_of(request)
    session = signer.load(request.cookies.get(COOKIE))
    if session is not None and session.sid in revoked_of(request):
        session = None
    if session is None:
        return Ctx(request, Session.anonymous(), signer, fresh=True)
    return Ctx(request, session, signer, fresh=False)


async def operator(request: Request) -> Ctx | Response:
    """The logged-in operator's context, or the way to the login page."""
    ctx = context(request)
    if ctx.session.auth:
        return ctx
    if request.headers.get("hx-request"):  # an htmx fragment: have the page itself go there
        return ctx.finish(Response(status_code=204, headers={"HX-Redirect": PREFIX + "/login"}))
    return ctx.redirect("/login")


async def posted(
    request: Request, *, login: bool = False
) -> tuple[Ctx, dict[str, list[str]]] | Response:
    """An action's context and form, once its CSRF token checked out (and, unless ``login``,
    its session is logged in)."""
    ctx = context(request)
    body = await request.body()
    if len(body) > MAX_FORM:
        return error(413, "form too large")
    form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    given = request.headers.get(CSRF_HEADER) or first(form, CSRF_FIELD)
    if ctx.fresh or not ctx.signer.csrf_ok(ctx.session, given):
        return ctx.finish(error(403, "CSRF token missing or wrong: reload the page and retry"))
    if not login and not ctx.session.auth:
        return ctx.redirect("/login")
    return ctx, form


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
