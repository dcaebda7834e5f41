"""Helpers shared by the tests; fixtures live in conftest.py and the part plugins (fixtures/).

Import what you need by name (``from helpers import AMQP_URL, eventually_true, message``).
Everything here talks to the services the way a user or an operator would: aio-pika for
messages, ``rabbitmqctl`` for what only the broker knows, asyncpg for scratch databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence, Sized
from pathlib import Path
from typing import Any, Literal, TypeVar

import aio_pika
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type hints
import httpx
import jsonschema
import uvicorn
from aio_pika.abc import AbstractIncomingMessage

from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link, Outgoing, PublishOutcome
from rabbitry.amqp.properties import Properties
from rabbitry.config import Settings
from rabbitry.errors import StorageError
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, PublishResult, PublishStatus, Route
from rabbitry.messaging.service import Service
from rabbitry.messaging.topology import Queue, Topology, work_queue
from rabbitry.outbox.store import Outbox

T = TypeVar("T")
S = TypeVar("S", bound=Service)

AMQP_URL = os.environ.get("RABBITRY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Nothing listens there: connecting is refused at once, as when RabbitMQ is down.
DEAD_AMQP_URL = "amqp://guest:guest@127.0.0.1:1/"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
RABBITMQCTL_TIMEOUT = 60
RABBITRY = str(Path(sys.executable).with_name("rabbitry"))  # the installed console script
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


# --- waiting ---------------------------------------------------------------------------------

Eventually = Callable[..., Awaitable[None]]


async def eventually_true(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


def at_least(items: Sized, count: int) -> Callable[[], Awaitable[bool]]:
    """A check for :func:`eventually_true`: ``items`` (a list a handler appends to) holds at
    least ``count`` entries."""

    async def check() -> bool:
        return len(items) >= count

    return check


def wait_until(predicate: Callable[[], T], *, timeout: float = 30.0, what: str = "condition") -> T:
    """Blocking twin of :func:`eventually_true` for tests that drive processes over HTTP: poll
    ``predicate`` until it returns something true, and return that; an HTTP error (the server
    is not listening yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def cli_environment(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a ``rabbitry`` process run for the test: the test's namespace, data
    directory, broker and retry settings, none of the developer's RABBITRY_* variables, then
    ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITRY_")}
    env.update(
        RABBITRY_NAMESPACE=settings.namespace,
        RABBITRY_DATA_DIR=str(settings.data_dir),
        RABBITRY_AMQP_URL=settings.amqp_url.get_secret_value(),
        RABBITRY_MAX_ATTEMPTS=str(settings.max_attempts),
        RABBITRY_RETRY_BASE_DELAY=str(settings.retry_base_delay),
        RABBITRY_RETRY_MAX_DELAY=str(settings.retry_max_delay),
        RABBITRY_CONNECT_TIMEOUT=str(settings.connect_timeout),
        COLUMNS="100",
    )
    env.update(overrides)
    return env


def run_example(name: str, env: dict[str, str], *args: str) -> list[str]:
    """Run ``examples/<name>`` as a reader of the docs would, with ``env`` and ``args``; the
    lines it printed. A failure (non-zero exit) fails the test."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.splitlines()


def free_port() -> int:
    """A TCP port nothing listens on right now, for a server the test starts."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def running(service: S) -> AsyncIterator[S]:
    """Run ``service`` in the test's loop, entered once it consumes (if it has ``connected``,
    as the workflow worker does); stopped, and waited for while it drains, on exit."""
    stopping = asyncio.Event()
    task = asyncio.create_task(service.run(stopping))
    try:
        connected: asyncio.Event | None = getattr(service, "connected", None)
        if connected is not None:
            await asyncio.wait_for(connected.wait(), timeout=15)
        yield service
    finally:
        stopping.set()
        await asyncio.wait_for(task, timeout=30)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test runner keeps its own signal handlers


@contextlib.asynccontextmanager
async def serving_on(
    app: Any,
    port: int,
    *,
    lifespan: Literal["on", "off"] = "on",
    start: float = 30,
    stop: float = 60,
) -> AsyncIterator[None]:
    """Serve the ASGI ``app`` on 127.0.0.1:``port`` in the test's loop (its lifespan run unless
    ``lifespan="off"``), entered once it listens; stopped, and waited for, on exit."""
    server = _Server(uvicorn.Config(app, port=port, log_level="warning", lifespan=lifespan))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(int(start / 0.05)):  # uvicorn sets a flag, it has no event to wait on
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        if task.done():
            task.result()  # raises what the server died of
        assert server.started, "the server did not start"
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=stop)


# --- messages, handlers, publishers, work queues ---------------------------------------------


def message(label: object = 0) -> Message:
    """A ``shipping.registered`` message; its non-ASCII text shows bodies kept byte for byte."""
    return Message(type="shipping.registered", payload={"label": label, "text": "envío"})


class RecordingPublisher:
    """Stands in for :class:`Publisher` where only what it is handed matters (no broker).

    Keeps what the broker would have taken in ``sent``; with ``status`` FAILED or PERSISTED
    every message gets that outcome ("broker down") instead, and ``crash`` is raised as is.
    ``fallback`` is what a ChangeTracker looks for to write events as ledger rows.
    """

    def __init__(
        self, status: PublishStatus = PublishStatus.PUBLISHED, *, fallback: Outbox | None = None
    ) -> None:
        self.status = status
        self.fallback = fallback
        self.crash: BaseException | None = None
        self.sent: list[tuple[Message, Route]] = []
        self.fallback_asked: list[bool] = []  # use_fallback of each call

    async def publish_many(
        self, items: Sequence[tuple[Message, Route]], *, use_fallback: bool = True
    ) -> list[PublishResult]:
        self.fallback_asked.append(use_fallback)
        if self.crash is not None:
            raise self.crash
        if self.status is not PublishStatus.PUBLISHED:
            return [PublishResult(m.id, self.status, "broker down") for m, _ in items]
        self.sent.extend(items)
        return [PublishResult(m.id, PublishStatus.PUBLISHED) for m, _ in items]

    def events(self) -> list[tuple[str, Any]]:
        """(type, payload) of every message sent."""
        return [(m.type, m.payload) for m, _ in self.sent]


class RecordingFallback:
    """A Fallback (the outbox's place) that keeps what it is given in ``items``, or, with
    ``broken``, fails like a dead database."""

    def __init__(self, *, broken: bool = False) -> None:
        self.items: list[tuple[Route, Message, str]] = []
        self.broken = broken

    async def store(self, items: Sequence[tuple[Route, Message, str]]) -> None:
        if self.broken:
            raise StorageError("database is down")
        self.items.extend(items)


class Handled(list[Message]):
    """A handler that keeps every message it is given, in order:
    ``Subscription(queue, default=handled)``, then ``await eventually(handled.include(m.id))``."""

    async def __call__(self, message: Message) -> None:
        self.append(message)

    def include(self, *ids: str) -> Callable[[], Awaitable[bool]]:
        """A check for :func:`eventually_true`: every message of ``ids`` has been handled."""

        async def check() -> bool:
            return set(ids) <= {m.id for m in self}

        return check


def work(
    settings: Settings, name: str = "work", *, bindings: Iterable[tuple[str, str]] = ()
) -> tuple[str, Topology]:
    """A work queue ``<namespace>.<name>`` (fed by ``bindings``, (exchange, routing key)
    pairs) with its retry queues and dead-letter queue, as the settings' retry policy has."""
    queue = f"{settings.namespace}.{name}"
    return queue, work_queue(queue, policy=settings.retry, bindings=bindings)


async def plain_queue(declarer: Declarer, settings: Settings, name: str = "inbox") -> str:
    """Declare a bare queue ``<namespace>.<name>`` (no retries, no dead letters)."""
    queue = f"{settings.namespace}.{name}"
    await declarer.declare(Topology.of(queues=[Queue(queue)]))
    return queue


async def publish(settings: Settings, queue: str, *messages: Message) -> None:
    """Publish straight to ``queue``; every message must be confirmed."""
    async with Publisher(settings.amqp) as publisher:
        results = await publisher.publish_many([(m, Route("", queue)) for m in messages])
    assert {r.status for r in results} == {PublishStatus.PUBLISHED}, results


async def publish_json(settings: Settings, queue: str, *payloads: object) -> None:
    """Publish each payload as the JSON body of a type ``t`` message straight to ``queue``, as a
    foreign publisher would (our own wire client, no envelope of ours: only the ``rr_job``
    header); every one must be confirmed. One connection, ``<namespace>-seed``, per call."""
    link = await Link.connect(settings.amqp.url, name=f"{settings.namespace}-seed")
    try:
        await link.confirm_select()
        properties = Properties(
            content_type="application/json", delivery_mode=2, headers={"rr_job": "t"}
        )
        items = [Outgoing("", queue, json.dumps(p).encode(), properties) for p in payloads]
        outcomes = await link.publish_many(items)
        assert all(o is PublishOutcome.ACKED for o in outcomes), outcomes
    finally:
        await link.close()


# --- queues, read back -----------------------------------------------------------------------


async def take_all(queue: str, *, limit: int = 100_000) -> list[AbstractIncomingMessage]:
    """Take up to ``limit`` messages that are ready in ``queue`` now (acked as taken)."""
    taken: list[AbstractIncomingMessage] = []
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        while len(taken) < limit:
            got = await declared.get(fail=False, no_ack=True)
            if got is None:
                break
            taken.append(got)
    return taken


async def drain_ids(queue: str, *, idle: float = 1.0) -> list[str]:
    """Consume ``queue`` until nothing comes for ``idle`` seconds; the message ids, in order."""
    ids: list[str] = []
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        declared = await channel.declare_queue(queue, passive=True)
        async with declared.iterator() as messages:
            while True:
                try:
                    got = await asyncio.wait_for(anext(messages), timeout=idle)
                except TimeoutError:
                    break
                ids.append(str(got.message_id))
                await got.ack()
    return ids


# --- the broker, as an operator sees it ------------------------------------------------------


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl -q`` and return its stdout; a failure fails the test."""
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def listed(kind: str, *columns: str) -> list[list[str]]:
    """``rabbitmqctl list_<kind>`` as rows of columns."""
    out = rabbitmqctl(f"list_{kind}", "--no-table-headers", *columns)
    return [line.split("\t") for line in out.splitlines() if line.strip()]


_CONNECTION_NAME = re.compile(r'\{"connection_name","([^"]*)"\}')


def connections(name_part: str) -> list[tuple[str, str]]:
    """(name, pid) of every broker connection whose name contains ``name_part``."""
    found = []
    for row in listed("connections", "pid", "client_properties"):
        named = _CONNECTION_NAME.search(row[-1])
        name = named.group(1) if named else ""
        if name_part in name:
            found.append((name, row[0]))
    return sorted(found)


def close_connections(name_part: str, reason: str = "test", *, exact: bool = False) -> int:
    """Have the broker close (CONNECTION_FORCED) every connection whose name contains
    ``name_part`` (or is it, with ``exact``), all at once; returns how many. Only the test's
    own connections: other people's tests and systems share the broker."""
    pids = []
    for row in listed("connections", "pid", "client_properties"):
        found = _CONNECTION_NAME.search(row[-1])
        name = found.group(1) if found else ""
        if name == name_part or (not exact and name_part in name):
            pids.append(row[0])
    closing = [
        subprocess.Popen(
            ["rabbitmqctl", "-q", "close_connection", pid, reason],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]
    # A connection may be gone already (its client closed it on losing a sibling): fine.
    for process in closing:
        process.wait(timeout=RABBITMQCTL_TIMEOUT)
    return len(pids)


async def broker_objects(prefix: str) -> tuple[list[str], list[str]]:
    """(queues, exchanges) whose names start with ``prefix``, as the broker lists them."""
    queues, exchanges = await asyncio.gather(
        asyncio.to_thread(listed, "queues", "name"),
        asyncio.to_thread(listed, "exchanges", "name"),
    )
    return (
        [row[0] for row in queues if row[0].startswith(prefix)],
        [row[0] for row in exchanges if row[0].startswith(prefix)],
    )


async def delete_namespace(namespace: str) -> None:
    """Delete every queue and exchange named ``<namespace>...``, whoever declared it."""
    queues, exchanges = await broker_objects(namespace)
    if not queues and not exchanges:
        return
    connection = await aio_pika.connect(AMQP_URL, client_properties={"connection_name": "cleanup"})
    async with connection:
        for name, is_queue in [(q, True) for q in queues] + [(e, False) for e in exchanges]:
            # A failed delete closes the channel (an exclusive queue of a live connection):
            # one channel per object keeps the others going.
            channel = await connection.channel()
            try:
                if is_queue:
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            except aio_pika.exceptions.AMQPError:
                continue
            await channel.close()


# --- databases -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_database(kind: str, directory: Path) -> AsyncIterator[str]:
    """The URL of an empty database of ``kind``: ``sqlite`` (a file in ``directory``) or
    ``postgresql`` (a database created for the test, dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'scratch.db'}"
        return
    # CREATE/DROP DATABASE take no bind parameters: the name is ours, [a-z0-9_] only.
    name = f"rabbitry_t_{uuid.uuid4().hex[:16]}"
    await _postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _postgres_admin(statement: str) -> None:
    admin = await asyncpg.connect(POSTGRES_ADMIN)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


SCHEMAS = Path(__file__).parent / "schemas"


def schema_validator(name: str) -> jsonschema.Draft7Validator:
    """A validator for one of the vendored JSON schemas in tests/schemas/ (VENDORED.md says
    where each comes from); its ``$ref``s resolve within the file, never over the network."""
    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
