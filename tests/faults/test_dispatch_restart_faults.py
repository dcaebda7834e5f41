"""DISPATCH on a three-node cluster while removals flow: its connections closed by the broker,
then the whole cluster stopped and started (the crash of DISPATCH's node is
test_dispatch_faults.py's case).

USER, SESSION and DISPATCH (with the relay, as ``rabbitry up`` runs them) serve on a local port
with quorum queues on the cluster; users of two tenants are removed one after the other through
the admin API while the faults strike. A removal requested while the cluster is down is stored
in the outbox and relayed once it is back. Counted: every removal completes (the user's sessions
are gone from the store and their tokens answer 401), and no bystander's session is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import func, select

from faults.conftest import CLUSTER_URL, Cluster, Figures
from faults.tally import Tally, count, migrated_database
from fixtures.sessions import (
    admin,
    bearer,
    delete_redis_keys,
    serving,
    sessions_settings_for,
    user_with_sessions,
)
from helpers import free_port
from rabbitry.config import Settings
from rabbitry.messaging.settings import QueueType
from rabbitry.outbox.models import OutboxMessageRecord
from rabbitry.sessions.sql_store import SqlSessionStore
from rabbitry.storage import Database

if TYPE_CHECKING:
    from conftest import Eventually

TENANTS = ("acme", "globex")
REMOVED = 30  # users removed per tenant
BYSTANDERS = 5  # users kept per tenant
SESSIONS = 2  # per user


@dataclass(frozen=True)
class User:
    tenant: str
    id: int
    tokens: list[str]

    @property
    def key(self) -> str:
        return f"{self.tenant}/{self.id}"


async def user_of(client: httpx.AsyncClient, tenant: str, name: str) -> User:
    return User(tenant, *await user_with_sessions(client, tenant, name, SESSIONS))


async def answers(client: httpx.AsyncClient, users: list[User]) -> set[int]:
    """The status codes of ``/sessions/me`` for every token of ``users``."""
    codes = set()
    for user in users:
        for token in user.tokens:
            me = await client.get(f"/api/tenants/{user.tenant}/sessions/me", headers=bearer(token))
            codes.add(me.status_code)
    return codes


async def outbox_rows(database: Database) -> int:
    async with database.session() as session:
        return int((await session.execute(select(func.count(OutboxMessageRecord.id)))).scalar_one())


async def sessions_left(store: SqlSessionStore, users: list[User]) -> int:
    return sum([len(await store.of_user(user.tenant, user.id)) for user in users])


def dispatch_settings(settings: Settings, database: Database) -> Settings:
    values = sessions_settings_for(
        settings.namespace,
        database.url,
        None,
        amqp_url=CLUSTER_URL,
        queue_type=QueueType.QUORUM,
        session_url=f"http://127.0.0.1:{free_port()}",
        # The default retry policy must outlast the restart for a removal in flight.
        max_attempts=Settings().max_attempts,
        retry_base_delay=Settings().retry_base_delay,
        retry_max_delay=Settings().retry_max_delay,
    )
    return values


async def test_removals_complete_through_closed_connections_and_a_cluster_restart(
    faults: Cluster,
    cluster_settings: Settings,
    tmp_path: Path,
    eventually: Eventually,
    figures: Figures,
) -> None:
    namespace = cluster_settings.namespace
    async with migrated_database(tmp_path) as database:
        settings = dispatch_settings(cluster_settings, database)
        store = SqlSessionStore(database)
        tally = Tally()
        try:
            async with serving(settings, workers=("dispatch", "relay")) as (client, _):
                removed: list[User] = []
                kept: list[User] = []
                for tenant in TENANTS:
                    made = await client.post("/api/tenants", json={"name": tenant}, headers=admin())
                    assert made.status_code == 201, made.text
                    for i in range(REMOVED):
                        removed.append(await user_of(client, tenant, f"r{i}"))
                    for i in range(BYSTANDERS):
                        kept.append(await user_of(client, tenant, f"k{i}"))
                assert await sessions_left(store, kept) == len(kept) * SESSIONS

                thirds = len(removed) // 3
                for n, user in enumerate(removed):
                    if n == thirds:
                        closed = await faults.close_connections(f"{namespace}-dispatch")
                        assert closed >= 1, "DISPATCH is not connected"
                    if n == 2 * thirds:
                        await faults.stop(1, 2, 3)
                    if n == 2 * thirds + thirds // 2:
                        await faults.start(1, 2, 3)
                    path = f"/api/tenants/{user.tenant}/users/{user.id}"
                    answer = await client.delete(path, headers=admin())
                    assert answer.status_code == 202, answer.text
                    tally.sent.append(user.key)

                async def all_removed() -> bool:
                    return await sessions_left(store, removed) == 0

                await eventually(all_removed, timeout=240, what="every removal done")
                done = [u.key for u in removed if not await store.of_user(u.tenant, u.id)]
                assert await sessions_left(store, kept) == len(kept) * SESSIONS  # bystanders
                assert await answers(client, kept) == {200}
                assert await answers(client, removed) == {401}
                stored = await outbox_rows(database)
        finally:
            await store.close()
            await delete_redis_keys(namespace)
    # "confirmed" here: removals DISPATCH completed; "stored": removal requests the outbox kept.
    tally.published.update(done)
    case = "DISPATCH: close_connection, then stop and start the cluster"
    count(figures, case, tally, done, stored=stored)
