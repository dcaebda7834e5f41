"""DISPATCH's client of SESSION's HTTP API, with the service credential (never the admin's).

One pooled HTTP/1.1 client per DISPATCH process (keep-alive: a thousand deletes reuse a few
connections). Anything but a 2xx answer, or no answer, is :class:`SessionServiceError`, which the
dispatch handler turns into a retry through the retry queues.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from rabbitry.errors import RabbitryError


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
        return await self._call("DELETE", f"/api/tenants/{tenant}/sessions/{session_id}")

    async def revoke_many(self, tenant: str, session_ids: Sequence[str]) -> int:
        """The batch form: one request for many sessions."""
        return await self._call(
            "POST",
            f"/api/tenants/{tenant}/sessions/revocations",
            json={"session_ids": list(session_ids)},
        )

    async def _call(self, method: str, path: str, json: object = None) -> int:
        try:
            response = await self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise SessionServiceError(f"SESSION unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code // 100 != 2:
            raise SessionServiceError(
                f"SESSION answered {response.status_code} to {method} {path}: {response.text[:200]}"
            )
        try:
            return int(response.json()["removed"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionServiceError(f"SESSION answered {response.text[:200]!r}") from exc

    async def close(self) -> None:
        await self._http.aclose()
