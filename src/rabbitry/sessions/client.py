"""DISPATCH's client of SESSION's HTTP API, with the service credential (never the admin's).

One pooled HTTP/1.1 client per DISPATCH process (keep-alive: a thousand deletes reuse a few
connections). Anything but a 2xx answer, or no answer, is :class:`SessionServiceError`, which the
dispatch handler turns into a retry through the retry queues. Once a tracer provider is set up,
each call is a CLIENT span whose context SESSION receives in ``traceparent``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from rabbitry.errors import RabbitryError
from rabbitry.messaging.tracing import active_tracer


class SessionServiceError(RabbitryError):
    """SESSION did not remove what it was asked to (down, failing, refusing the credential)."""


class SessionClient:
    def __init__(self, base_url: str, service_token: str, *, timeout: float = 5.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {service_token}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=32),
        )

    async def revoke(self, tenant: str, session_id: str) -> int:
        """Ask SESSION to remove one session; how many it removed (0: gone already)."""
        return await self._call(
            "DELETE",
            f"/api/tenants/{tenant}/sessions/{session_id}",
            template="/api/tenants/{tenant}/sessions/{session_id}",
        )

    async def revoke_many(self, tenant: str, session_ids: Sequence[str]) -> int:
        """The batch form: one request for many sessions."""
        return await self._call(
            "POST",
            f"/api/tenants/{tenant}/sessions/revocations",
            json={"session_ids": list(session_ids)},
            template="/api/tenants/{tenant}/sessions/revocations",
        )

    async def _call(self, method: str, path: str, *, template: str, json: object = None) -> int:
        tracer = active_tracer()
        if tracer is None:
            return _removed(await self._request(method, path, json, None), method, path)
        url = self._http.base_url.join(path)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.full": str(url),
            "url.template": template,
            "server.address": url.host,
            "server.port": url.port or (443 if url.scheme == "https" else 80),
        }
        with tracer.start_as_current_span(
            f"{method} {template}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            headers: dict[str, str] = {}
            propagate.inject(headers)
            response = await self._request(method, path, json, headers)
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", str(response.status_code))
            return _removed(response, method, path)

    async def _request(
        self, method: str, path: str, json: object, headers: dict[str, str] | None
    ) -> httpx.Response:
        try:
            return await self._http.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise SessionServiceError(f"SESSION unreachable: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._http.aclose()


def _removed(response: httpx.Response, method: str, path: str) -> int:
    """How many sessions SESSION says it removed; :class:`SessionServiceError` otherwise."""
    if response.status_code // 100 != 2:
        raise SessionServiceError(
            f"SESSION answered {response.status_code} to {method} {path}: {response.text[:200]}"
        )
    try:
        return int(response.json()["removed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionServiceError(f"SESSION answered {response.text[:200]!r}") from exc
