"""DISPATCH (``rabbitry worker dispatch``): steps 4-8 of a removal, for every tenant.

One :class:`~rabbitry.messaging.worker.Worker`, so one consumer connection per process,
consumes every tenant's queue ``<ns>.tenant.<t>.removals`` (step 4), a consumer per queue added
while it runs. A removal request reads the user's sessions from the tenant's collection (step
5), asks SESSION over HTTP, with the service token, to remove each one (step 6; SESSION does
step 7), reads again, and returns (the ack, step 8) only once none is left. SESSION down or
failing: the handler raises :class:`Retry`, so the request waits in the queue's retry tiers with
exponential backoff and is dead-lettered with the reason once the policy's attempts are spent.
A redelivered request is harmless: removing a removed session is a no-op, and a user with no
sessions left is acked at once.

**Replicas.** Tenant queues have ``x-single-active-consumer``: every replica consumes every
queue and the broker delivers to one of them, handing over to another when it goes.

**New tenants.** USER publishes a ``tenant.created`` notice when it creates one; each replica
hears it on a queue of its own and subscribes at once. Every ``tenant_reconcile_interval`` (30 s)
it also reads the tenants table and serves whatever it missed (the notice is a hint).

**Bad tenant rows.** A row whose name is not a valid tenant name (an older version let some in),
or whose queue the broker refuses, is logged once, counted in ``rabbitry_invalid_tenants`` and
skipped: one tenant's data never stops DISPATCH, nor, under ``rabbitry up``, the services beside
it.

**Old queues.** Tenants' queues from before single-active-consumer are emptied into the new ones
and deleted in the background (:mod:`rabbitry.sessions.legacy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence

from rabbitry import metrics
from rabbitry.config import Settings
from rabbitry.errors import ConfigError, RabbitryError
from rabbitry.messaging import Declarer
from rabbitry.messaging.consumer import Reject, Retry, Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher
from rabbitry.messaging.tracing import tracing_middleware
from rabbitry.messaging.worker import Worker
from rabbitry.sessions.backends import open_store
from rabbitry.sessions.client import SessionClient, SessionServiceError
from rabbitry.sessions.legacy import retire_legacy_queue
from rabbitry.sessions.removal import REMOVAL, RemovalRequest
from rabbitry.sessions.store import SessionStore
from rabbitry.sessions.tenants import CREATED, Tenants, is_tenant
from rabbitry.sessions.topology import TenantsLayout, notice_topology, tenant_topology
from rabbitry.storage import Database

log = logging.getLogger(__name__)

# Tenants declared in one call: 20 x 7 objects stay well within the declarer's RPC timeout on a
# loaded broker (a call is timed as a whole).
SUBSCRIBE_GROUP = 20
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
    """A :class:`~rabbitry.messaging.service.Service` named ``dispatch``.

    ``replica`` names this process among the DISPATCH replicas (its notice queue and its
    connection names); a random one by default."""

    name = "dispatch"

    def __init__(
        self, settings: Settings, *, db: Database | None = None, replica: str | None = None
    ) -> None:
        if settings.service_token is None:
            raise ConfigError(
                "dispatch needs RABBITRY_SERVICE_TOKEN (the credential SESSION accepts from it)"
            )
        self.settings = settings
        self._db = db
        self.replica = replica or uuid.uuid4().hex[:12]
        self._layout = TenantsLayout(settings.namespace)
        self.worker = Worker(
            f"{settings.namespace}-dispatch-{self.replica}",
            [],
            tenant_topology(settings, ()),
            amqp=settings.amqp,
            retry=settings.retry,
            middleware=tracing_middleware(),
        )
        self._served: set[str] = set()
        self._skipped: set[str] = set()
        self._serving = asyncio.Lock()
        self._handler: Callable[[str], RemovalHandler] | None = None
        self._retiring: asyncio.Queue[str] = asyncio.Queue()

    @property
    def consuming(self) -> bool:
        """Whether DISPATCH consumes its tenants' queues (what ``/readyz`` reports)."""
        return self.worker.connected.is_set()

    def serves(self, tenant: str) -> bool:
        """Whether this replica consumes ``tenant``'s queue (active or standing by)."""
        return tenant in self._served

    @property
    def tenants(self) -> frozenset[str]:
        return frozenset(self._served)

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
            self._handler = lambda tenant: RemovalHandler(tenant, store, client)
            notices = Subscription(
                self._layout.notice_queue(self.replica),
                handlers={CREATED: self._on_created},
                concurrency=1,
            )
            tenants = Tenants(db)
            await self._reconcile(tenants)  # before connecting: one declaration round for all
            # Subscribed last, so declared last, right before the consumes: it expires unused.
            await self.worker.subscribe([notices], notice_topology(settings, self.replica))
            worker = asyncio.create_task(self.worker.run(stopping), name=self.worker.name)
            retiring = asyncio.create_task(self._retire_legacy(stopping))
            try:
                while not stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), settings.tenant_reconcile_interval)
                    if not stopping.is_set():
                        await self._reconcile(tenants)
            finally:
                stopping.set()
                retiring.cancel()
                await asyncio.gather(worker, retiring, return_exceptions=True)

    async def _on_created(self, message: Message) -> None:
        """USER's notice of a new tenant: consume its queue now, not at the next reconcile."""
        tenant = message.payload.get("tenant") if isinstance(message.payload, dict) else None
        if not isinstance(tenant, str) or not is_tenant(tenant):
            raise Reject(f"not a tenant-created notice: {message.payload!r}"[:200])
        log.info("dispatch: tenant %s announced; subscribing", tenant)
        await self._serve([tenant])

    async def _reconcile(self, tenants: Tenants) -> None:
        """Serve every tenant of the table not served yet (the safety net under the notices)."""
        try:
            found = await tenants.since(0)
            invalid = await tenants.invalid()
        except RabbitryError as exc:
            log.warning("dispatch: cannot read tenants (%s); trying again", exc)
            return
        for bad in invalid:
            self._skip(bad.name, "not a valid tenant name")
        new = [t.name for t in found if t.name not in self._served | self._skipped]
        for start in range(0, len(new), SUBSCRIBE_GROUP):
            await self._serve(new[start : start + SUBSCRIBE_GROUP])

    async def _serve(self, names: Sequence[str]) -> None:
        """Subscribe to the queues of ``names``, one topology declaration for the group; a
        tenant whose queue the broker refuses is skipped, not the rest."""
        async with self._serving:
            await self._serve_group(names)

    async def _serve_group(self, names: Sequence[str]) -> None:
        assert self._handler is not None
        names = [n for n in dict.fromkeys(names) if n not in self._served | self._skipped]
        subscriptions = []
        for name in names:
            try:
                queue = self._layout.tenant_queue(name)
            except ValueError as exc:  # a name the broker's names refuse
                self._skip(name, str(exc))
                continue
            handlers = {REMOVAL: self._handler(name)}
            subscriptions.append(Subscription(queue, handlers=handlers, concurrency=4))
        if not subscriptions:
            return
        served = [n for n in names if n not in self._skipped]
        try:
            await self.worker.subscribe(subscriptions, tenant_topology(self.settings, served))
        except ConfigError as exc:
            if len(served) == 1:
                self._skip(served[0], str(exc))
                return
            for name in served:  # find the one the broker refuses
                await self._serve_group([name])
            return
        self._served.update(served)
        for name in served:
            self._retiring.put_nowait(name)
        log.info("dispatch: serving %d more tenant(s), %d in all", len(served), len(self._served))

    async def _retire_legacy(self, stopping: asyncio.Event) -> None:
        """Move the tenants served here off their queues from before single-active-consumer
        (see :mod:`rabbitry.sessions.legacy`), once consuming, one tenant at a time."""
        settings = self.settings
        while not stopping.is_set():
            await self.worker.connected.wait()
            tenant = await self._retiring.get()
            try:
                async with contextlib.AsyncExitStack() as stack:
                    declarer = await Declarer.connect(
                        settings.amqp.url,
                        name=f"{self.worker.name}-legacy",
                        timeout=settings.amqp.connect_timeout,
                        rpc_timeout=settings.amqp.rpc_timeout,
                    )
                    stack.push_async_callback(declarer.close)
                    publisher = Publisher(settings.amqp, name=f"{self.worker.name}-legacy")
                    stack.push_async_callback(publisher.close)
                    while True:
                        await retire_legacy_queue(settings, declarer, publisher, tenant)
                        if self._retiring.empty():
                            break
                        tenant = self._retiring.get_nowait()
            except RabbitryError as exc:
                log.warning("dispatch: old queue of %s not retired yet (%s)", tenant, exc)
                self._retiring.put_nowait(tenant)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.settings.tenant_reconcile_interval)

    def _skip(self, tenant: str, why: str) -> None:
        if tenant not in self._skipped:
            self._skipped.add(tenant)
            metrics.INVALID_TENANTS.set(len(self._skipped))
            log.error("dispatch: skipping tenant row %r: %s", tenant[:70], why)
