"""Broker URLs as users write them, read one way by the wire client and the aio-pika declarer."""

from __future__ import annotations

import pytest
from pamqp import commands
from pamqp import frame as pamqp_frame
from yarl import URL

from rabbitry.amqp import handshake
from rabbitry.amqp.url import DEFAULT_HEARTBEAT, Endpoint
from rabbitry.config import Settings
from rabbitry.messaging.settings import AmqpSettings


def test_query_options_are_read_with_the_names_aio_pika_and_pika_use() -> None:
    endpoint = Endpoint.from_url(
        "amqps://app:pw@broker.example/prod?heartbeat=15&connection_timeout=2.5"
        "&frame_max=65536&channel_max=16&name=billing&cafile=/ca.pem"
        "&certfile=/me.pem&keyfile=/me.key"
    )
    assert (endpoint.host, endpoint.port, endpoint.vhost, endpoint.tls) == (
        "broker.example",
        5671,
        "prod",
        True,
    )
    assert (endpoint.heartbeat, endpoint.connection_timeout) == (15, 2.5)
    assert (endpoint.frame_max, endpoint.channel_max, endpoint.name) == (65536, 16, "billing")
    assert (endpoint.cafile, endpoint.certfile, endpoint.keyfile) == (
        "/ca.pem",
        "/me.pem",
        "/me.key",
    )
    assert Endpoint.from_url("amqp://h/?timeout=4").connection_timeout == 4.0


def test_an_empty_password_stays_empty_and_a_missing_one_is_guest() -> None:
    assert Endpoint.from_url("amqp://app:@h/").password == ""
    assert Endpoint.from_url("amqp://app@h/").password == "guest"
    assert Endpoint.from_url("amqp://h/").user == "guest"
    assert Endpoint.from_url("amqp://:@h/").user == ""


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("amqp://h/?hearbeat=5", "unknown broker URL option"),
        ("amqp://h/?heartbeat=soon", "not a whole number"),
        ("amqp://h/?frame_max=100", "outside"),
        ("amqp://h/?auth=kerberos", "plain or external"),
        ("amqp://h/?auth=external", "needs amqps"),
        ("http://h/", "scheme"),
    ],
)
def test_a_url_that_cannot_work_is_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Endpoint.from_url(url)


def test_external_auth_logs_in_with_the_client_certificate_and_no_password() -> None:
    endpoint = Endpoint.from_url("amqps://h/?auth=external&certfile=/me.pem&keyfile=/me.key")
    start = commands.Connection.Start(mechanisms="PLAIN EXTERNAL")
    _, _, start_ok = pamqp_frame.unmarshal(handshake.start_ok(start, endpoint, "n"))
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert (start_ok.mechanism, start_ok.response) == ("EXTERNAL", "")
    with pytest.raises(ValueError, match="no EXTERNAL"):
        handshake.start_ok(commands.Connection.Start(mechanisms="PLAIN"), endpoint, "n")


def test_the_url_name_prefixes_each_connection_name() -> None:
    endpoint = Endpoint.from_url("amqp://h/?name=billing")
    start = commands.Connection.Start(mechanisms="PLAIN")
    _, _, start_ok = pamqp_frame.unmarshal(handshake.start_ok(start, endpoint, "w-publisher"))
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert start_ok.client_properties["connection_name"] == "billing:w-publisher"


def test_the_urls_frame_max_channel_max_and_heartbeat_lower_the_brokers() -> None:
    endpoint = Endpoint.from_url("amqp://h/?frame_max=65536&channel_max=16&heartbeat=10")
    tune = commands.Connection.Tune(channel_max=2047, frame_max=131072, heartbeat=60)
    frames, frame_max, heartbeat = handshake.tune_ok(tune, endpoint, 30)
    _, _, tune_ok = pamqp_frame.unmarshal(frames)
    assert isinstance(tune_ok, commands.Connection.TuneOk)
    assert (frame_max, heartbeat) == (65536, 10)
    assert (tune_ok.channel_max, tune_ok.frame_max, tune_ok.heartbeat) == (16, 65536, 10)


@pytest.mark.parametrize("vhost", ["/", "prod", "team/prod", "with space"])
def test_aio_pika_reads_the_declarers_url_as_the_wire_client_does(vhost: str) -> None:
    endpoint = Endpoint(host="h", port=5673, user="us@er", password="p/w:x", vhost=vhost)
    url = URL(endpoint.aio_pika_url())
    # What aiormq does with it (aiormq.connection.Connection.__init__ and auth.PlainAuth):
    read_vhost = "/" if url.path in ("", "/") else url.path[1:].replace("%2F", "/")
    assert (url.host, url.port, url.user, url.password, read_vhost) == (
        "h",
        5673,
        "us@er",
        "p/w:x",
        vhost,
    )
    assert Endpoint.from_url(str(url)).vhost == vhost


def test_the_declarer_refuses_an_empty_password_rather_than_log_in_as_guest() -> None:
    # aiormq's PLAIN sends "guest" for an empty password; say so instead of doing it.
    with pytest.raises(ValueError, match="empty password"):
        Endpoint.from_url("amqp://app:@h/").aio_pika_url()


def test_tls_files_from_settings_join_the_url_unless_it_names_its_own() -> None:
    settings = AmqpSettings(
        url="amqps://h/?cafile=/mine.pem", ca_file="/ca.pem", cert_file="/c.pem"
    )
    endpoint = Endpoint.from_url(settings.url)
    assert (endpoint.cafile, endpoint.certfile) == ("/mine.pem", "/c.pem")
    assert AmqpSettings(url="amqp://h/").url == "amqp://h/"


def test_a_tls_file_that_cannot_be_read_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="cannot load the TLS files"):
        Endpoint.from_url("amqps://h/?cafile=/nonexistent/ca.pem").ssl_context()


def test_the_application_settings_pass_their_tls_files_to_every_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RABBITRY_AMQP_URL", "amqps://app:pw@broker/")
    monkeypatch.setenv("RABBITRY_AMQP_CA_FILE", "/etc/rabbitry/ca.pem")
    monkeypatch.setenv("RABBITRY_AMQP_CERT_FILE", "/etc/rabbitry/client.pem")
    monkeypatch.setenv("RABBITRY_AMQP_KEY_FILE", "/etc/rabbitry/client.key")
    endpoint = Endpoint.from_url(Settings().amqp.url)
    assert (endpoint.cafile, endpoint.certfile, endpoint.keyfile) == (
        "/etc/rabbitry/ca.pem",
        "/etc/rabbitry/client.pem",
        "/etc/rabbitry/client.key",
    )


def test_a_cluster_url_names_several_hosts_as_libpq_and_mongodb_drivers_do() -> None:
    endpoint = Endpoint.from_url("amqp://app:pw@h1:5681,H2,[::1]:5683/prod?heartbeat=5")
    assert endpoint.hosts == (("h1", 5681), ("h2", 5672), ("::1", 5683))
    assert (endpoint.host, endpoint.port) == ("h1", 5681)
    assert (endpoint.user, endpoint.password, endpoint.vhost) == ("app", "pw", "prod")
    assert endpoint.where == "h1:5681,h2:5672,[::1]:5683"
    assert Endpoint.from_url("amqps://h1,h2/").hosts == (("h1", 5671), ("h2", 5671))


def test_each_candidate_is_one_host_with_the_urls_credentials_and_options() -> None:
    endpoint = Endpoint.from_url("amqp://app:pw@h1:1,h2:2,h3:3/v?heartbeat=5")
    candidates = endpoint.candidates(start=1)
    assert [c.where for c in candidates] == ["h2:2", "h3:3", "h1:1"]
    assert all(c.hosts == ((c.host, c.port),) for c in candidates)
    assert {(c.user, c.password, c.vhost, c.heartbeat) for c in candidates} == {
        ("app", "pw", "v", 5)
    }
    assert URL(candidates[0].aio_pika_url()).port == 2


def test_connections_start_from_a_random_host_so_processes_spread_over_the_nodes() -> None:
    endpoint = Endpoint.from_url("amqp://h1,h2,h3/")
    firsts = {endpoint.candidates()[0].host for _ in range(200)}
    assert firsts == {"h1", "h2", "h3"}  # all three, but for a chance of 3 * (2/3)**200


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("amqp://h1:5672,,h3/", "empty host"),
        ("amqp://h1:5672,h2:x/", "invalid port 'x' of host 'h2'"),
        ("amqp://h1:70000/", "invalid port"),
        ("amqp://[::1]x/", "invalid host"),
    ],
)
def test_a_bad_host_list_is_refused_with_the_host_at_fault(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Endpoint.from_url(url)


def test_the_default_heartbeat_notices_a_silent_node_within_twenty_seconds() -> None:
    # Given up after two silent intervals (the protocol's rule): 2 * 10 s.
    assert 2 * DEFAULT_HEARTBEAT <= 20
    assert URL(Endpoint.from_url("amqp://h/").aio_pika_url()).query["heartbeat"] == "10"


def test_a_cluster_urls_password_is_masked_in_logs_and_reprs() -> None:
    settings = AmqpSettings(url="amqp://app:s3cret@h1:5672,h2:5672/prod")
    assert settings.safe_url == "amqp://app:***@h1:5672,h2:5672/prod"
    assert "s3cret" not in repr(settings)
