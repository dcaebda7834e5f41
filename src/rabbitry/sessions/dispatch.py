"""DISPATCH (``rabbitry worker dispatch``): steps 4-8 of a removal, for every tenant.

For each tenant, a :class:`~rabbitry.messaging.worker.Worker` consumes the tenant's queue
``<ns>.tenant.<t>.session-removal`` (step 4). A removal request reads the user's sessions from
the tenant's collection (step 5), asks SESSION over HTTP, with the service token, to remove each
one (step 6; SESSION does step 7), reads again, and returns (the ack, step 8) only once none is
left. SESSION down or failing: the handler raises :class:`Retry`, so the request waits in the
queue's retry tiers with exponential backoff and is dead-lettered with the reason once the
policy's attempts are spent. A redelivered request is harmless: removing a removed session is a
no-op, and a user with no sessions left is acked at once.

**New tenants.** Every ``tenant_poll_interval`` (0.5 s) the service reads the tenants created
since the last one it saw (an index range on the tenant id) and starts a worker for each, which
declares the tenant's queue before consuming: a tenant is served within about a second, with no
restart and no extra message flow. A full re-read every ``FULL_SCAN_EVERY`` polls catches a
tenant whose insert committed out of id order.

**Bad tenant rows.** A row whose name is not a valid tenant name (an older version let some in)
is logged once, counted in ``rabbitry_invalid_tenants`` and skipped: one tenant's data never
stops DISPATCH, nor, under ``rabbitry up``, the services beside it.

**Broker loss.** Each worker reconnects with backoff and declares and subscribes again by itself
(the Worker's own loop), so all tenants resume after the broker drops the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from rabbitry import metrics
from rabbitry.config import Settings
from rabbitry.errors import ConfigError, RabbitryError
from rabbitry.messaging.consumer import Reject, Retry, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.tracing import tracing_middleware
from rabbitry.messaging.worker import Worker
from rabbitry.sessions.backends import open_store
from rabbitry.sessions.client import SessionClient, SessionServiceError
from rabbitry.sessions.removal import REMOVAL, RemovalRequest
from rabbitry.sessions.store import SessionStore
from rabbitry.sessions.tenants import Tenants
from rabbitry.sessions.topology import TenantsLayout, tenant_topology
from rabbitry.storage import Database

log = logging.getLogger(__name__)

FULL_SCAN_EVERY = 60
MAX_ROUNDS = 3  # list-and-delete rounds before a request goes back for a later retry


class RemovalHandler:
    """Handles the removal requests of one tenant's queue."""

    def __init__(self, tenant: str, store: SessionStore, client: SessionClient) -> None:
        self.tenant = tenant
        self._store = store
        self._client = client

    async def __call__(self, message: Message) -> None:
        request = RemovalRequest.parse(message)
        if request.tenant != self.tenant:
            raise Reject(f"a request for tenant {request.tenant!r} on {self.tenant!r}'s queue")
        for _ in range(MAX_ROUNDS):
            sessions = await self._store.of_user(self.tenant, request.user_id)
            if not sessions:
                return
            try:
                # The batch call when SESSION offers it, else one DELETE per session; the
                # client bounds the requests in flight for the whole process.
                await self._client.revoke_all(self.tenant, [s.id for s in sessions])
            except SessionServiceError as exc:
                raise Retry(reason=str(exc)) from exc
        raise Retry(reason=f"user {request.user_id} still has sessions after {MAX_ROUNDS} rounds")


class DispatchService:
    """A :class:`~rabbitry.messaging.service.Service` named ``dispatch``."""

    name = "dispatch"

    def __init__(self, settings: Settings, *, db: Database | None = None) -> None:
        if settings.service_token is None:
            raise ConfigError(
                "dispatch needs RABBITRY_SERVICE_TOKEN (the credential SESSION accepts from it)"
            )
        self.settings = settings
        self._db = db
        self._layout = TenantsLayout(settings.namespace)
        self.workers: dict[str, Worker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_id = 0
        self._polls = 0
        self._skipped: set[str] = set()

    @property
    def consuming(self) -> bool:
        """Whether every tenant's worker is consuming (what ``/readyz`` reports)."""
        return all(worker.connected.is_set() for worker in self.workers.values())

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.settings
        assert settings.service_token is not None
        async with contextlib.AsyncExitStack() as stack:
            db = self._db
            if db is None:
                db = await stack.enter_async_context(Database(settings.sql_url))
            store = open_store(settings, db)
            stack.push_async_callback(store.close)
            client = SessionClient(
                settings.session_url or "http://127.0.0.1:8000",
                settings.service_token.get_secret_value(),
                timeout=settings.publish_timeout,
                concurrency=settings.dispatch_concurrency,
                batch=settings.dispatch_batch,
            )
            stack.push_async_callback(client.close)
            tenants = Tenants(db)
            try:
                while not stopping.is_set():
                    for tenant in await self._poll(tenants):
                        handler = RemovalHandler(tenant, store, client)
                        try:
                            self._start(tenant, handler, stopping)
                        except ValueError as exc:  # a name the broker's names refuse
                            self._skip(tenant, str(exc))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), settings.tenant_poll_interval)
            finally:
                stopping.set()
                await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _poll(self, tenants: Tenants) -> list[str]:
        """Tenants not served yet, and tenants whose worker died (to restart them)."""
        self._polls += 1
        after = 0 if self._polls % FULL_SCAN_EVERY == 1 else self._last_id
        names: list[str] = []
        for name, task in list(self._tasks.items()):
            if task.done():
                if not task.cancelled() and task.exception() is not None:
                    log.error("dispatch worker of %s died: %r; restarting", name, task.exception())
                del self._tasks[name]
                names.append(name)
        try:
            found = await tenants.since(after)
            if after == 0:
                for bad in await tenants.invalid():
                    self._skip(bad.name, "not a valid tenant name")
        except RabbitryError as exc:
            log.warning("dispatch: cannot read tenants (%s); trying again", exc)
            found = []
        if found:
            self._last_id = max(self._last_id, found[-1].id)
        names += [t.name for t in found]
        return [
            name
            for name in dict.fromkeys(names)
            if name not in self._tasks and name not in self._skipped
        ]

    def _skip(self, tenant: str, why: str) -> None:
        if tenant not in self._skipped:
            self._skipped.add(tenant)
            metrics.INVALID_TENANTS.set(len(self._skipped))
            log.error("dispatch: skipping tenant row %r: %s", tenant[:70], why)

    def _start(self, tenant: str, handler: RemovalHandler, stopping: asyncio.Event) -> None:
        settings = self.settings
        queue = self._layout.tenant_queue(tenant)
        worker = Worker(
            f"{settings.namespace}-dispatch-{tenant}",
            [Subscription(queue, handlers={REMOVAL: handler}, concurrency=4)],
            tenant_topology(settings, [tenant]),
            amqp=settings.amqp,
            retry=settings.retry,
            middleware=tracing_middleware(),
        )
        self.workers[tenant] = worker
        self._tasks[tenant] = asyncio.create_task(worker.run(stopping), name=worker.name)
        log.info("dispatch: serving tenant %s (%s)", tenant, queue)
