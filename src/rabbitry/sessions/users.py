"""Users of a tenant (USER): argon2id password hashes, and a verification that answers in the
same time whether the username exists or not.

Hashing costs tens of milliseconds of CPU by design, so it runs in a thread: the event loop
keeps serving other requests meanwhile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from rabbitry.errors import Conflict, Invalid, NotFound, StorageError
from rabbitry.sessions.models import Tenant, User
from rabbitry.sessions.tenants import check_tenant
from rabbitry.storage import Database
from rabbitry.storage.clock import utcnow

MAX_USERNAME = 255
MAX_PASSWORD = 1024  # argon2 takes any length; a bound keeps one request from costing more


@dataclass(frozen=True, slots=True)
class UserInfo:
    id: int
    tenant: str
    username: str


def hasher(time_cost: int = 3, memory_kib: int = 65536) -> PasswordHasher:
    """argon2id with RFC 9106's low-memory parameters unless told otherwise."""
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=4)


class Users:
    """The users table, per tenant."""

    def __init__(
        self,
        database: Database,
        passwords: PasswordHasher | None = None,
        *,
        concurrent_checks: int = 4,
    ) -> None:
        self._db = database
        self._hasher = passwords or hasher()
        # Each check takes memory_cost of RAM and a core for tens of ms: a flood of logins
        # queues here instead of exhausting the machine.
        self._checks = asyncio.Semaphore(concurrent_checks)
        # Verified when the username is unknown, so both failures cost one argon2 verify.
        self._decoy = self._hasher.hash("rabbitry decoy password")

    async def create(self, tenant: str, username: str, password: str) -> UserInfo:
        """Add a user; :class:`NotFound` without the tenant, :class:`Conflict` on a taken name."""
        check_tenant(tenant)
        check_username(username)
        check_password(password)
        hashed = await asyncio.to_thread(self._hasher.hash, password)
        try:
            async with self._db.session() as session:
                if await session.scalar(select(Tenant.id).where(Tenant.name == tenant)) is None:
                    raise NotFound(f"no tenant {tenant!r}")
                row = User(
                    tenant=tenant, username=username, password_hash=hashed, created_at=utcnow()
                )
                session.add(row)
                await session.flush()
                return UserInfo(row.id, tenant, username)
        except StorageError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise Conflict(f"user {username!r} exists already in {tenant!r}") from None
            raise

    async def verify(self, tenant: str, username: str, password: str) -> UserInfo | None:
        """The user if the password is theirs; ``None`` for a wrong password or an unknown
        user alike, after the same amount of work."""
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(User.id, User.password_hash).where(
                        User.tenant == tenant, User.username == username
                    )
                )
            ).first()
        stored = self._decoy if row is None else row.password_hash
        async with self._checks:
            ok = await asyncio.to_thread(self._check, stored, password[:MAX_PASSWORD])
        if row is None or not ok:
            return None
        if self._hasher.check_needs_rehash(stored):
            await self._rehash(int(row.id), password)
        return UserInfo(int(row.id), tenant, username)

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def _rehash(self, user_id: int, password: str) -> None:
        hashed = await asyncio.to_thread(self._hasher.hash, password)
        async with self._db.session() as session:
            await session.execute(
                update(User).where(User.id == user_id).values(password_hash=hashed)
            )

    async def get(self, tenant: str, user_id: int) -> UserInfo | None:
        async with self._db.session() as session:
            row = (
                await session.execute(
                    select(User.id, User.username).where(User.tenant == tenant, User.id == user_id)
                )
            ).first()
        return None if row is None else UserInfo(int(row.id), tenant, str(row.username))

    async def page(self, tenant: str, after_id: int, limit: int) -> list[UserInfo]:
        """Up to ``limit`` users of ``tenant`` after id ``after_id``, by id."""
        query = (
            select(User.id, User.username)
            .where(User.tenant == tenant, User.id > after_id)
            .order_by(User.id)
            .limit(limit)
        )
        async with self._db.session() as session:
            rows = (await session.execute(query)).all()
        return [UserInfo(int(row.id), tenant, str(row.username)) for row in rows]

    async def remove(self, tenant: str, user_id: int) -> UserInfo | None:
        """Delete the user of ``tenant``; the removed user, or ``None`` if there was none."""
        async with self._db.session() as session:
            row = (
                await session.execute(
                    delete(User)
                    .where(User.tenant == tenant, User.id == user_id)
                    .returning(User.id, User.username)
                )
            ).first()
        return None if row is None else UserInfo(int(row.id), tenant, str(row.username))


def check_username(username: str) -> str:
    if not username or len(username) > MAX_USERNAME or not username.isprintable():
        raise Invalid(f"a username is 1-{MAX_USERNAME} printable characters")
    return username


def check_password(password: str) -> str:
    if not password or len(password) > MAX_PASSWORD:
        raise Invalid(f"a password is 1-{MAX_PASSWORD} characters")
    return password
