"""DISPATCH's client of SESSION's HTTP API, with the service credential (never the admin's).

One client per DISPATCH process, shared by every tenant's handler: one pool of HTTP/1.1
keep-alive connections (a thousand deletes reuse a few connections) and one bound on the
requests in flight, so a thousand tenants removing users at once still send SESSION at most
``concurrency`` requests.

:meth:`SessionClient.revoke_all` is what DISPATCH calls: the batch call
(``POST .../sessions/revocations``, ``batch_size`` ids each) whenever SESSION offers it, else one
``DELETE .../sessions/{sid}`` per session, ``concurrency`` at a time. Whether SESSION offers it
is learnt on first use: a SESSION without the route answers 405 (the path matches the per-session
DELETE) or 404, and the client falls back for that call and for ``rediscover_after`` seconds,
then tries again (a SESSION upgraded meanwhile gets the batch call without a DISPATCH restart).

Anything else but a 2xx answer, or no answer, is :class:`SessionServiceError`, which the
dispatch handler turns into a retry through the retry queues. Once a tracer provider is set up,
each call is a CLIENT span whose context SESSION receives in ``traceparent``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode

from rabbitry.errors import RabbitryError
from rabbitry.messaging.tracing import active_tracer

BATCH_SIZE = 500
CONCURRENCY = 16
REDISCOVER_AFTER = 300.0


class SessionServiceError(RabbitryError):
    """SESSION did not remove what it was asked to (down, failing, refusing the credential)."""


class _NoBatchRoute(SessionServiceError):
    """SESSION has no batch route (404/405): the per-session calls still work."""


class SessionClient:
    """``batch``: ``None`` discovers whether SESSION offers the batch call; ``True`` always
    uses it (a 404/405 is then an error), ``False`` never does. ``transport`` replaces the
    pooled network transport (its own limits then apply; ``concurrency`` still bounds the
    requests in flight)."""

    def __init__(
        self,
        base_url: str,
        service_token: str,
        *,
        timeout: float = 5.0,
        concurrency: int = CONCURRENCY,
        batch: bool | None = None,
        batch_size: int = BATCH_SIZE,
        rediscover_after: float = REDISCOVER_AFTER,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if concurrency < 1 or batch_size < 1:
            raise ValueError("concurrency and batch_size must be at least 1")
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {service_token}"},
            timeout=timeout,
            # As many connections as requests in flight: none waits for a connection, none
            # is opened only to idle.
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
        )
        self._limit = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._configured = batch
        self._rediscover_after = rediscover_after
        self._no_batch_until: float | None = None  # monotonic time of the next try; None: try

    @property
    def uses_batch(self) -> bool:
        """Whether the next :meth:`revoke_all` starts with the batch call."""
        if self._configured is not None:
            return self._configured
        return self._no_batch_until is None or time.monotonic() >= self._no_batch_until

    async def revoke(self, tenant: str, session_id: str) -> int:
        """Ask SESSION to remove one session; how many it removed (0: gone already)."""
        async with self._limit:
            return await self._call(
                "DELETE",
                f"/api/tenants/{tenant}/sessions/{session_id}",
                template="/api/tenants/{tenant}/sessions/{session_id}",
            )

    async def revoke_many(self, tenant: str, session_ids: Sequence[str]) -> int:
        """The batch form: one request for many sessions (at most 10,000, SESSION's limit)."""
        async with self._limit:
            return await self._call(
                "POST",
                f"/api/tenants/{tenant}/sessions/revocations",
                json={"session_ids": list(session_ids)},
                template="/api/tenants/{tenant}/sessions/revocations",
            )

    async def revoke_all(self, tenant: str, session_ids: Sequence[str]) -> int:
        """Remove these sessions of ``tenant`` the fastest way SESSION offers; how many it
        removed. Raises :class:`SessionServiceError` if any was not removed."""
        removed = 0
        start = 0
        if self.uses_batch:
            try:
                while start < len(session_ids):
                    chunk = session_ids[start : start + self._batch_size]
                    removed += await self.revoke_many(tenant, chunk)
                    start += len(chunk)
                self._no_batch_until = None
                return removed
            except _NoBatchRoute:
                if self._configured:
                    raise
                self._no_batch_until = time.monotonic() + self._rediscover_after
        return removed + await self._revoke_each(tenant, session_ids[start:])

    async def _revoke_each(self, tenant: str, session_ids: Sequence[str]) -> int:
        """One DELETE per session, at most ``concurrency`` in flight. After a failure no new
        request starts, but those in flight finish (cancelling them would only cost their
        connections); the first failure is raised, saying how many failed."""
        pending: Iterator[str] = iter(session_ids)
        failures: list[SessionServiceError] = []
        removed = tried = 0

        async def work() -> None:
            nonlocal removed, tried
            for session_id in pending:
                if failures:
                    return
                tried += 1
                try:
                    # Not `removed += await ...`: that reads `removed` before the await and
                    # loses what the other workers added meanwhile.
                    count = await self.revoke(tenant, session_id)
                except SessionServiceError as exc:
                    failures.append(exc)
                else:
                    removed += count

        await asyncio.gather(*(work() for _ in range(min(self._concurrency, len(session_ids)))))
        if failures:
            untried = len(session_ids) - tried
            rest = f" ({untried} not tried)" if untried else ""
            raise SessionServiceError(
                f"{len(failures)} of {tried} deletes failed{rest}: {failures[0]}"
            ) from failures[0]
        return removed

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
    if response.status_code in (404, 405) and method == "POST":
        raise _NoBatchRoute(f"SESSION answered {response.status_code} to {method} {path}")
    if response.status_code // 100 != 2:
        raise SessionServiceError(
            f"SESSION answered {response.status_code} to {method} {path}: {response.text[:200]}"
        )
    try:
        return int(response.json()["removed"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SessionServiceError(f"SESSION answered {response.text[:200]!r}") from exc
