"""``amqps://`` for real: TLS to a local terminator that forwards to the broker.

The shared broker listens on plain 5672 only, and restarting it with a TLS listener would cut
everyone else's connections, so each test puts a TLS terminator of its own in front of it: an
asyncio server with a certificate signed by a CA the test makes with ``openssl``, forwarding
the decrypted bytes to RabbitMQ. Everything client-side is what production runs: the Link,
the aio-pika declarer, a Worker and a Publisher, all reading one ``amqps://`` URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from rabbitry.amqp.declarer import Declarer
from rabbitry.amqp.link import Link, LinkClosed, LinkError, PublishOutcome, Received
from rabbitry.amqp.properties import Properties
from rabbitry.config import Settings
from rabbitry.errors import BrokerError
from rabbitry.messaging.consumer import Subscription
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.publisher import Publisher, Route
from rabbitry.messaging.topology import Queue, Topology, work_queue

if TYPE_CHECKING:
    from conftest import Eventually, WorkerRunner


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(name: str, cn: str, extensions: str, cwd: Path) -> None:
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd
    )
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    where = tmp_path_factory.mktemp("tls")
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=Rabbitry test CA", cwd=where,
    )  # fmt: skip
    _signed("server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\n", where)
    _signed("client", "rabbitry-client", "extendedKeyUsage=clientAuth\n", where)
    return Certificates(
        where / "ca.pem",
        where / "server.pem",
        where / "server.key",
        where / "client.pem",
        where / "client.key",
    )


class Terminator:
    """A TLS server on a free port forwarding plain AMQP to the broker; counts handshakes."""

    def __init__(self, certificates: Certificates, *, require_client_certificate: bool) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificates.server, certificates.server_key)
        if require_client_certificate:
            context.load_verify_locations(certificates.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        self._context = context
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.handshakes = 0
        self.client_subjects: list[str] = []
        self.port = 0

    def url(self, query: str = "") -> str:
        return f"amqps://guest:guest@localhost:{self.port}/" + (f"?{query}" if query else "")

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        peer = writer.get_extra_info("peercert")
        if peer:
            self.client_subjects.append(dict(x[0] for x in peer["subject"])["commonName"])
        self._writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 5672)
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
    finally:
        sink.close()


@contextlib.asynccontextmanager
async def terminator(
    certificates: Certificates, *, require_client_certificate: bool = False
) -> AsyncIterator[Terminator]:
    running = Terminator(certificates, require_client_certificate=require_client_certificate)
    await running.start()
    try:
        yield running
    finally:
        await running.close()


async def test_a_link_publishes_and_consumes_over_amqps(
    certificates: Certificates, declarer: Declarer, namespace: str
) -> None:
    queue = f"{namespace}.tls"
    await declarer.declare(Topology.of(queues=[Queue(queue)]))
    async with terminator(certificates) as tls:
        link = await Link.connect(tls.url(f"cafile={certificates.ca}"), name=f"{namespace}-tls")
        try:
            await link.confirm_select()
            outcome = await link.publish("", queue, b"over tls", Properties(delivery_mode=2))
            got: list[Received] = []
            arrived = asyncio.Event()

            def on_delivery(delivery: Received) -> None:
                got.append(delivery)
                link.ack(delivery.delivery_tag)
                arrived.set()

            await link.consume(queue, on_delivery)
            await asyncio.wait_for(arrived.wait(), 10)
        finally:
            await link.close()
    assert outcome is PublishOutcome.ACKED
    assert [d.body for d in got] == [b"over tls"]
    assert tls.handshakes == 1


async def test_a_worker_and_a_publisher_run_on_one_amqps_url_declarer_included(
    certificates: Certificates,
    settings: Settings,
    declarer: Declarer,
    run_worker: WorkerRunner,
    eventually: Eventually,
) -> None:
    queue = f"{settings.namespace}.tls-work"
    topology = work_queue(queue, policy=settings.retry)
    seen: list[object] = []

    async def handle(message: Message) -> None:
        seen.append(message.payload)

    async with terminator(certificates) as tls:
        url = SecretStr(tls.url(f"cafile={certificates.ca}"))
        over_tls = settings.model_copy(update={"amqp_url": url})
        subscription = Subscription(queue, handlers={"t": handle})
        async with run_worker([subscription], topology, settings=over_tls):
            async with Publisher(over_tls.amqp, name=f"{settings.namespace}-tls") as publisher:
                result = await publisher.publish(Message(type="t", payload="hi"), Route("", queue))

            async def handled() -> bool:
                return seen == ["hi"]

            await eventually(handled, what="the message, over TLS both ways")
    assert result.ok, result
    assert tls.handshakes >= 3  # the declarer (aio-pika), the consumer and the publisher


async def test_a_broker_certificate_no_trusted_ca_signed_is_refused_clearly(
    certificates: Certificates,
) -> None:
    async with terminator(certificates) as tls:
        with pytest.raises(LinkError, match="CERTIFICATE_VERIFY_FAILED"):
            await Link.connect(tls.url(), timeout=5)  # the system CAs do not know the test CA
        with pytest.raises(BrokerError, match="CERTIFICATE_VERIFY_FAILED"):
            await Declarer.connect(tls.url(), timeout=5)


async def test_a_client_certificate_from_the_settings_is_presented_to_a_broker_that_asks(
    certificates: Certificates, settings: Settings, namespace: str
) -> None:
    async with terminator(certificates, require_client_certificate=True) as tls:
        amqp = settings.amqp
        with_certificate = type(amqp)(
            url=tls.url(),
            ca_file=str(certificates.ca),
            cert_file=str(certificates.client),
            key_file=str(certificates.client_key),
        )
        link = await Link.connect(with_certificate.url, name=f"{namespace}-mtls")
        await link.close()
        declarer = await Declarer.connect(with_certificate.url, name=f"{namespace}-mtls")
        await declarer.close()
        without = tls.url(f"cafile={certificates.ca}")
        # Refused, not timed out: with TLS 1.3 the terminator's alert comes after the
        # handshake, and the link sees the connection closed; with TLS 1.2, a handshake error.
        refusal = r"connection closed by the broker|CERTIFICATE_REQUIRED|HANDSHAKE_FAILURE"
        with pytest.raises(LinkError, match=refusal):
            link = await Link.connect(without, name=f"{namespace}-no-cert", timeout=5)
            await link.confirm_select()
    assert tls.client_subjects[:2] == ["rabbitry-client", "rabbitry-client"]


async def test_external_auth_sends_the_certificate_not_a_password(
    certificates: Certificates,
) -> None:
    # RabbitMQ offers EXTERNAL only with its rabbitmq_auth_mechanism_ssl plugin, which the
    # shared broker does not run: the broker's own answer shows what was asked for.
    async with terminator(certificates, require_client_certificate=True) as tls:
        query = (
            f"auth=external&cafile={certificates.ca}&certfile={certificates.client}"
            f"&keyfile={certificates.client_key}"
        )
        with pytest.raises(LinkClosed, match="no EXTERNAL authentication"):
            await Link.connect(tls.url(query), timeout=5)
    assert tls.client_subjects == ["rabbitry-client"]
