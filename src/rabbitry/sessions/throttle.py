"""Login throttling: at most ``max_failures`` password checks for one username in a tenant, and
``per_client`` for one client address, per window of ``window`` seconds.

An attempt is *reserved* before the password is checked (Redis ``INCR`` first; in process, with
no await between reading and writing the count), so concurrent attempts cannot all slip in
before the first failure is counted: of 40 concurrent wrong passwords, 5 are checked and 35
answered 429. A success clears the username's count and gives its client back the attempt.

The window is fixed: it starts at the first attempt and is never extended by later ones, so
nobody can keep a known user locked out for longer than ``window`` by hammering the name.

The counts live in Redis when the cache does (so every SESSION process sees them), else in a
bounded, time-ordered in-process table. Keys hold a hash of the username and the address, never
the user input itself.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from rabbitry.errors import StorageError

MAX_ENTRIES = 100_000  # in-process keys at most; the oldest window goes first past it


def _who(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


class LoginThrottle(Protocol):
    async def attempt(self, tenant: str, username: str, client: str) -> bool:
        """Reserve one attempt; ``False`` when the username or the client is over its limit
        (nothing may be checked then)."""

    async def succeeded(self, tenant: str, username: str, client: str) -> None:
        """The attempt was right: clear the username's count, give the client its attempt."""


# KEYS: user key, client key. ARGV: window ms, max per user, max per client.
# One round trip, atomic: the count is taken before any password is checked.
_ATTEMPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  counts[i] = redis.call('INCR', key)
  if counts[i] == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
end
if counts[1] > tonumber(ARGV[2]) or counts[2] > tonumber(ARGV[3]) then return 0 end
return 1
"""


# KEYS: user key, client key. A client key back at 0 goes: no key outlives its use.
_SUCCEEDED = """
redis.call('DEL', KEYS[1])
if redis.call('DECR', KEYS[2]) <= 0 then redis.call('DEL', KEYS[2]) end
return 1
"""


class RedisLoginThrottle:
    def __init__(
        self,
        redis: Redis,
        *,
        namespace: str,
        max_failures: int,
        lockout: float,
        per_client: int = 50,
    ) -> None:
        self._redis = redis
        self._ns = namespace
        self._max = max_failures
        self._per_client = per_client
        self._window_ms = int(lockout * 1000)
        self._attempt = redis.register_script(_ATTEMPT)
        self._succeeded = redis.register_script(_SUCCEEDED)

    def key(self, tenant: str, username: str) -> str:
        return f"{self._ns}:login-failures:{_who(tenant, username)}"

    def client_key(self, client: str) -> str:
        return f"{self._ns}:login-client:{_who(client)}"

    async def attempt(self, tenant: str, username: str, client: str) -> bool:
        keys = [self.key(tenant, username), self.client_key(client)]
        args = [self._window_ms, self._max, self._per_client]
        try:
            return bool(await self._attempt(keys=keys, args=args))
        except RedisError as exc:
            raise StorageError(f"Redis: cannot count a login attempt: {exc}") from exc

    async def succeeded(self, tenant: str, username: str, client: str) -> None:
        try:
            await self._succeeded(keys=[self.key(tenant, username), self.client_key(client)])
        except RedisError as exc:
            raise StorageError(f"Redis: cannot clear the login throttle: {exc}") from exc


class MemoryLoginThrottle:
    """The same rules in this process's memory, in a table of at most ``max_entries`` keys."""

    def __init__(
        self,
        *,
        max_failures: int,
        lockout: float,
        per_client: int = 50,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._max = max_failures
        self._per_client = per_client
        self._window = lockout
        self._cap = max_entries
        # key → (count, end of its window); insertion order is window order (fixed windows).
        self._counts: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._counts)

    async def attempt(self, tenant: str, username: str, client: str) -> bool:
        # No await from here to the end: asyncio runs this as one step, so two concurrent
        # attempts cannot both read the same count.
        now = time.monotonic()
        self._expire(now)
        user = self._bump("u:" + _who(tenant, username), now)
        by_client = self._bump("c:" + _who(client), now)
        return user <= self._max and by_client <= self._per_client

    async def succeeded(self, tenant: str, username: str, client: str) -> None:
        self._counts.pop("u:" + _who(tenant, username), None)
        key = "c:" + _who(client)
        found = self._counts.get(key)
        if found is not None and found[0] > 1:
            self._counts[key] = (found[0] - 1, found[1])
        elif found is not None:
            del self._counts[key]

    def _bump(self, key: str, now: float) -> int:
        count, until = self._counts.get(key, (0, 0.0))
        if until <= now:
            self._counts.pop(key, None)
            count, until = 0, now + self._window
        self._counts[key] = (count + 1, until)
        return count + 1

    def _expire(self, now: float) -> None:
        while self._counts:
            key, (_, until) = next(iter(self._counts.items()))
            if until > now and len(self._counts) < self._cap:
                return
            del self._counts[key]
