"""Fixtures every test may use: a namespace of its own, settings, a declarer and a broker probe.

* ``namespace`` — unique per test (``t`` + 10 hex digits); every broker object a test creates
  must start with it, so parallel tests (and other people's runs) share the broker safely.
* ``settings`` — :class:`Settings` in that namespace with short retry delays (0.2 s, 0.4 s),
  ``max_attempts=3``, fast timeouts and ``data_dir=tmp_path``. Derive variants with
  ``settings.model_copy(update={...})``.
* ``declarer`` — a connected :class:`Declarer`. Requesting it (or ``broker``) also deletes,
  after the test, every queue and exchange whose name starts with the namespace, whoever
  declared it (a worker, a subprocess, the CLI): the broker lists them, not a registry.
* ``broker`` — a :class:`BrokerProbe`: read messages back with pika (``basic_get``) including
  the AMQP type tag of every header, publish raw messages the way a foreign client does, read
  ready/unacked counts, close connections by name.
* ``run_worker`` — start a :class:`Worker` in the test's loop and wait until it consumes.
* ``endpoint`` — a local TCP port standing in for the broker: closed, silent or forwarding to
  RabbitMQ, counting the connections it gets (an outage the test can start and end).
* ``eventually`` — poll an async condition with a bound (waiting for an event, never timing it).

Nothing here skips: with RabbitMQ down, the fixtures raise and the tests fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika  # type: ignore[import-untyped]  # pika ships no type hints
import pika.data  # type: ignore[import-untyped]  # (the same package)
import pytest

from helpers import (
    AMQP_URL,
    broker_objects,
    close_connections,
    connections,
    delete_namespace,
    eventually_true,
    listed,
)
from helpers import Eventually as Eventually  # the eventually fixture's type, for tests to import
from rabbitry.amqp.declarer import Declarer
from rabbitry.config import ManualProcessingMode, Settings
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.middleware import Middleware
from rabbitry.messaging.settings import QueueType
from rabbitry.messaging.topology import Topology
from rabbitry.messaging.worker import Worker

# The parts' fixtures (databases on SQLite and PostgreSQL, topics, events settings).
pytest_plugins = (
    "fixtures.outbox",
    "fixtures.events",
    "fixtures.sessions",
    "fixtures.tracing",
)


# --- names and settings ----------------------------------------------------------------------


@pytest.fixture
def namespace() -> str:
    """A broker namespace of this test's own."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings(namespace: str, tmp_path: Path) -> Settings:
    """Settings in the test's namespace; every broker-facing value explicit, so a developer's
    RABBITRY_* environment cannot change what the tests exercise."""
    return Settings(
        namespace=namespace,
        amqp_url=AMQP_URL,
        database_url=None,
        redis_url=None,
        mongodb_url=None,
        data_dir=tmp_path,
        rabbit_active=True,
        queue_type=QueueType.CLASSIC,
        manual_processing_mode=ManualProcessingMode.RABBIT,
        strict_rr_job=True,
        max_attempts=3,
        retry_base_delay=0.2,
        retry_max_delay=5.0,
        connect_timeout=2.0,
        publish_timeout=5.0,
        circuit_open_seconds=1.0,
        drain_timeout=5.0,
        prefetch=50,
        concurrency=8,
    )


# --- the broker, seen from outside ----------------------------------------------------------


@pytest.fixture
async def _broker_cleanup(namespace: str) -> AsyncIterator[None]:
    yield
    await delete_namespace(namespace)


@pytest.fixture
async def declarer(namespace: str, _broker_cleanup: None) -> AsyncIterator[Declarer]:
    """A connected Declarer; the namespace's broker objects are deleted after the test."""
    connected = await Declarer.connect(AMQP_URL, name=f"{namespace}-test")
    try:
        yield connected
    finally:
        await connected.close()


class TaggedTable(dict[str, Any]):
    """A decoded AMQP field table that also remembers each field's type tag (``l``, ``x``...)."""

    tags: dict[str, str]


def _tagged_decode_table(encoded: bytes, offset: int) -> tuple[TaggedTable, int]:
    # Same walk as pika.data.decode_table, keeping the tag byte of every value.
    table = TaggedTable()
    table.tags = {}
    size = struct.unpack_from(">I", encoded, offset)[0]
    offset += 4
    limit = offset + size
    while offset < limit:
        key, offset = pika.data.decode_short_string(encoded, offset)
        table.tags[key] = chr(encoded[offset])
        table[key], offset = pika.data.decode_value(encoded, offset)
    return table, offset


_TAGGING = threading.Lock()


@contextmanager
def _tagging_tables() -> Iterator[None]:
    with _TAGGING:
        original = pika.data.decode_table
        pika.data.decode_table = _tagged_decode_table
        try:
            yield
        finally:
            pika.data.decode_table = original


@dataclass
class Received:
    """One message read back from a queue with pika."""

    exchange: str
    routing_key: str
    redelivered: bool
    properties: pika.BasicProperties
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # header name -> AMQP type tag


def _connect_pika() -> pika.BlockingConnection:
    parameters = pika.URLParameters(AMQP_URL)
    parameters.client_properties = {"connection_name": "test-probe"}
    return pika.BlockingConnection(parameters)


def _get_all(queue: str, limit: int) -> list[Received]:
    taken: list[Received] = []
    connection = _connect_pika()
    try:
        channel = connection.channel()
        with _tagging_tables():
            while len(taken) < limit:
                method, properties, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                headers = properties.headers or {}
                taken.append(
                    Received(
                        exchange=method.exchange,
                        routing_key=method.routing_key,
                        redelivered=method.redelivered,
                        properties=properties,
                        body=body,
                        headers=dict(headers),
                        tags=dict(getattr(headers, "tags", {})),
                    )
                )
    finally:
        connection.close()
    return taken


def _publish(
    exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties
) -> None:
    connection = _connect_pika()
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        # mandatory: an unroutable test message is a broken test, raise UnroutableError.
        channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
    finally:
        connection.close()


class BrokerProbe:
    """Looks at the broker the way an operator or a foreign client would (pika, rabbitmqctl)."""

    async def get_all(self, queue: str, *, limit: int = 100_000) -> list[Received]:
        """Take every ready message off ``queue`` (auto-acked), with header type tags."""
        return await asyncio.to_thread(_get_all, queue, limit)

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        **properties: Any,
    ) -> None:
        """Publish with pika, confirmed and mandatory: pika picks the header types (``I`` for
        small ints, ``x`` for bytes), as a third-party publisher would."""
        props = pika.BasicProperties(headers=dict(headers) if headers else None, **properties)
        await asyncio.to_thread(_publish, exchange, routing_key, body, props)

    async def counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages of ``queue``, as the broker reports them."""
        rows = await asyncio.to_thread(
            listed, "queues", "name", "messages_ready", "messages_unacknowledged"
        )
        for row in rows:
            if row[0] == queue:
                return int(row[1]), int(row[2])
        raise AssertionError(f"queue {queue} does not exist")

    async def close_connections(self, name_part: str, reason: str = "test") -> int:
        """Have the broker close every connection whose name contains ``name_part``
        (CONNECTION_FORCED, as ``rabbitmqctl close_all_connections`` does, but only ours)."""
        return await asyncio.to_thread(close_connections, name_part, reason)

    async def connections(self, name_part: str) -> list[tuple[str, str]]:
        """(name, pid) of every connection whose name contains ``name_part``, sorted."""
        return await asyncio.to_thread(connections, name_part)

    async def objects(self, prefix: str) -> tuple[list[str], list[str]]:
        """(queues, exchanges) whose names start with ``prefix``."""
        return await broker_objects(prefix)


@pytest.fixture
def broker(_broker_cleanup: None) -> BrokerProbe:
    """A probe of the shared broker; the namespace's objects are deleted after the test."""
    return BrokerProbe()


# --- a broker address under the test's control ----------------------------------------------


class Endpoint:
    """A local TCP port standing in for the broker: ``closed`` (refuses), ``silent`` (accepts and
    never answers) or ``forward`` (a proxy to RabbitMQ). Counts the connections it accepted.

    A forwarding endpoint can also ``freeze()`` (bytes stop flowing both ways, as on a dead
    network path: no FIN, no RST), ``thaw()``, and ``cut()`` every connection it carries.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._mode = "closed"
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def reserve(self) -> None:
        """Pick a free port and leave it closed."""
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()

    async def open(self, mode: str) -> None:
        self._mode = mode
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        if self._mode == "silent":
            await reader.read()  # until the client gives up
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._pipes.add(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                await self._flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Abort every connection carried so far (both sides see a reset)."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    """A stand-in broker address (see :class:`Endpoint`), closed until the test opens it."""
    local = Endpoint(AMQP_URL)
    await local.reserve()
    try:
        yield local
    finally:
        await local.close()


# --- waiting ---------------------------------------------------------------------------------


@pytest.fixture
def eventually() -> Eventually:
    """``await eventually(check, timeout=15, what="...")`` with an async ``check``."""
    return eventually_true


# --- workers ---------------------------------------------------------------------------------

WorkerRunner = Callable[..., AbstractAsyncContextManager[Worker]]


@pytest.fixture
def run_worker(settings: Settings) -> WorkerRunner:
    """``async with run_worker(subscriptions, topology) as worker:`` — a Worker running in the
    test's loop, entered once it consumes (``worker.connected``), stopped and drained on exit.
    Keyword ``settings=`` and ``name=`` override the defaults (the test's settings, and
    ``<namespace>-worker``, which is also the prefix of its connection names); ``middleware=``
    is the worker's."""

    @asynccontextmanager
    async def start(
        subscriptions: Sequence[Subscription],
        topology: Topology,
        *,
        settings: Settings = settings,
        name: str | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> AsyncIterator[Worker]:
        stopping = asyncio.Event()
        worker = Worker(
            name or f"{settings.namespace}-worker",
            subscriptions,
            topology,
            amqp=settings.amqp,
            retry=settings.retry,
            middleware=middleware,
        )
        task = asyncio.create_task(worker.run(stopping))
        try:
            connected = asyncio.ensure_future(worker.connected.wait())
            done, _ = await asyncio.wait(
                [connected, task], timeout=20, return_when=asyncio.FIRST_COMPLETED
            )
            connected.cancel()
            if task in done:
                task.result()  # raises what the worker died of
                raise AssertionError("worker returned before it consumed")
            if connected not in done:
                raise AssertionError("worker did not start consuming within 20s")
            yield worker
        finally:
            stopping.set()
            await asyncio.wait_for(task, timeout=settings.drain_timeout + 15)

    return start


# --- no silent skips ---------------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test fails the run: a missing service must never pass for a green suite."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or exitstatus != pytest.ExitCode.OK:
        return
    skipped = reporter.stats.get("skipped", [])
    if skipped:
        reporter.write_line(f"{len(skipped)} test(s) skipped: failing the run", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
