"""Traced HTTP requests: an ASGI middleware that runs each request in a SERVER span.

The span continues the caller's trace (its ``traceparent`` header), is named
``<METHOD> <route template>`` (``DELETE /api/tenants/{tenant}/users/{user_id}``) once the
router has matched, and carries OpenTelemetry's HTTP server attributes. Until a tracer
provider is set up (:mod:`rabbitry.app.telemetry`) a request passes straight through.
WebSockets and the lifespan are not traced here.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rabbitry.messaging.tracing import HEADERS, active_tracer


class TraceRequests:
    """A SERVER span around every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = active_tracer() if scope["type"] == "http" else None
        if tracer is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if scope.get("query_string"):
            attributes["url.query"] = scope["query_string"].decode("latin-1")
        if (server := scope.get("server")) is not None:
            attributes["server.address"] = server[0]
            if server[1] is not None:  # None on a Unix socket
                attributes["server.port"] = server[1]
        if (client := scope.get("client")) is not None:
            attributes["client.address"] = client[0]
        if agent := headers.get("user-agent"):
            attributes["user_agent.original"] = agent
        with tracer.start_as_current_span(
            method,
            context=propagate.extract(headers, getter=HEADERS),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                        span.set_attribute("error.type", str(status))
                await send(message)

            try:
                await self.app(scope, receive, traced_send)
            finally:
                # The router sets the matched route in the scope (FastAPI's APIRoute).
                route = getattr(scope.get("route"), "path", None)
                if isinstance(route, str):
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
