"""Broker URLs as users write them, read one way for both halves of the client.

``amqp://user:pass@host:port/vhost?options`` and ``amqps://...`` (TLS, port 5671 by default).
A cluster is several hosts in one URL, the form libpq and the MongoDB drivers use:
``amqp://user:pass@h1:5672,h2:5672,h3/vhost``; every connection tries them in turn, starting
from a random one (:meth:`Endpoint.candidates`), so the processes of a deployment spread over
the nodes and a lost node costs a reconnect, not an outage.
The wire client (:class:`~rabbitry.amqp.link.Link`) and the aio-pika declarer both take the
:class:`Endpoint` parsed here, so they agree on every detail: the vhost (``%2F`` is a slash),
a missing user or password (``guest``) against an empty password (kept empty), the options.

Query options, named as aio-pika and aiormq name them, plus pika's ``connection_timeout``:

=====================  ==========================================================
``heartbeat``          seconds (0: off)
``connection_timeout`` seconds the handshake may take (also ``timeout``)
``frame_max``          largest frame we accept, bytes (the broker's lower value wins)
``channel_max``        highest channel number we ask for
``name``               the connection name the broker's management UI shows
``auth``               ``plain`` (default) or ``external`` (the TLS client certificate)
``cafile``/``capath``  CAs that sign the broker's certificate (default: the system's)
``certfile``/``keyfile``  our client certificate and its key
``no_verify_ssl``      ``1`` skips certificate and host name checks (tests only)
=====================  ==========================================================

Pure but for :meth:`Endpoint.ssl_context`, which reads the certificate files.
"""

from __future__ import annotations

import dataclasses
import random
import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

_SCHEMES = {"amqp": 5672, "amqps": 5671}

DEFAULT_HEARTBEAT = 10
"""Seconds between heartbeats when the URL names none. A peer silent for two intervals is
given up, so a node that died without closing its sockets (a crash, a cut network) is
noticed in 15-20 s rather than the minute or two of RabbitMQ's 60 s default."""
_AUTH = frozenset({"PLAIN", "EXTERNAL"})
# aio-pika's own connection options: accepted and left to it, so one URL serves both.
_AIO_PIKA_ONLY = frozenset({"reconnect_interval", "fail_fast", "cadata"})
_KNOWN = frozenset(
    {
        "heartbeat",
        "connection_timeout",
        "timeout",
        "frame_max",
        "channel_max",
        "name",
        "auth",
        "cafile",
        "capath",
        "certfile",
        "keyfile",
        "no_verify_ssl",
    }
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect, and how: one parsed broker URL.

    ``host`` and ``port`` are the first of ``hosts`` (every host of a cluster URL, in the
    URL's order); :meth:`candidates` gives one endpoint per host to try.
    """

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    vhost: str
    tls: bool = False
    auth: str = "PLAIN"
    heartbeat: int | None = None
    connection_timeout: float | None = None
    frame_max: int | None = None
    channel_max: int | None = None
    name: str | None = None
    cafile: str | None = None
    capath: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True
    hosts: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.hosts:
            object.__setattr__(self, "hosts", ((self.host, self.port),))  # frozen: set once

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """Parse ``url``; ``ValueError`` names what is wrong with it."""
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}: use amqp:// or amqps://")
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        hosts = _hosts(hostlist, _SCHEMES[parts.scheme])
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - _KNOWN - _AIO_PIKA_ONLY)
        if unknown:
            known = ", ".join(sorted(_KNOWN))
            raise ValueError(f"unknown broker URL option(s) {', '.join(unknown)}; known: {known}")
        auth = options.get("auth", "plain").upper()
        if auth not in _AUTH:
            raise ValueError(f"auth={options['auth']!r}: use plain or external")
        tls = parts.scheme == "amqps"
        if auth == "EXTERNAL" and not tls:
            raise ValueError(
                "auth=external needs amqps:// (the TLS client certificate is the login)"
            )
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        user, has_password, password = userinfo.partition(":")
        return cls(
            host=hosts[0][0],
            port=hosts[0][1],
            hosts=hosts,
            # Absent means guest, as in every client; present but empty stays empty.
            user=unquote(user) if "@" in parts.netloc else "guest",
            password=unquote(password) if has_password else "guest",
            vhost=unquote(path) or "/",
            tls=tls,
            auth=auth,
            heartbeat=_int(options, "heartbeat", 0, 65535),
            connection_timeout=_seconds(options, "connection_timeout")
            or _seconds(options, "timeout"),
            frame_max=_int(options, "frame_max", 4096, 2**32 - 1),
            channel_max=_int(options, "channel_max", 1, 65535),
            name=options.get("name") or None,
            cafile=options.get("cafile") or None,
            capath=options.get("capath") or None,
            certfile=options.get("certfile") or None,
            keyfile=options.get("keyfile") or None,
            verify=options.get("no_verify_ssl", "0").lower() in ("0", "false", "no"),
        )

    @property
    def where(self) -> str:
        """``host:port`` (every host of a cluster, comma-separated), for messages."""
        return ",".join(_where(host, port) for host, port in self.hosts)

    def candidates(self, start: int | None = None) -> list[Endpoint]:
        """One single-host endpoint per host, in the order to try them.

        The URL's order turned to begin at ``start`` (default: a random host), so processes
        that share one URL spread over the nodes instead of all landing on the first, and
        each tries every node once before giving up.
        """
        count = len(self.hosts)
        first = random.randrange(count) if start is None else start % count
        order = self.hosts[first:] + self.hosts[:first]
        return [dataclasses.replace(self, host=h, port=p, hosts=((h, p),)) for h, p in order]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an ``amqps://`` endpoint (None for ``amqp://``).

        Raises ``ValueError`` when a certificate or key file cannot be loaded.
        """
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.cafile, capath=self.capath)
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the TLS files of the broker URL: {exc}") from exc
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def aio_pika_url(self) -> str:
        """The same endpoint as a URL aio-pika reads the way we do; TLS goes in the context.

        aio-pika substitutes ``guest`` for an empty password, so that is refused here rather
        than silently logging in as someone else.
        """
        if self.auth == "PLAIN" and not self.password:
            raise ValueError("the declarer (aio-pika) cannot log in with an empty password")
        heartbeat = DEFAULT_HEARTBEAT if self.heartbeat is None else self.heartbeat
        query: dict[str, str] = {"auth": self.auth.lower(), "heartbeat": str(heartbeat)}
        if self.name:
            query["name"] = self.name
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        scheme = "amqps" if self.tls else "amqp"
        vhost = quote(self.vhost, safe="")
        where = _where(self.host, self.port)
        return f"{scheme}://{credentials}@{where}/{vhost}?{urlencode(query)}"


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _hosts(hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """``h1:5672,[::1]:5673,h3`` as (host, port) pairs; an empty list is localhost."""
    if not hostlist:
        return (("localhost", default_port),)
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        if item.startswith("["):  # an IPv6 address, maybe with a port
            address, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid host {item!r} in the broker URL")
            host, raw_port = address, rest[1:] if rest else ""
        else:
            host, _, raw_port = item.partition(":")
        if not host:
            raise ValueError(f"empty host in the broker URL's host list {hostlist!r}")
        if raw_port == "":
            port = default_port
        elif raw_port.isdigit() and 0 < int(raw_port) < 65536:
            port = int(raw_port)
        else:
            raise ValueError(f"invalid port {raw_port!r} of host {host!r} in the broker URL")
        hosts.append((unquote(host).lower(), port))
    return tuple(hosts)


def _int(options: dict[str, str], key: str, low: int, high: int) -> int | None:
    raw = options.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} in the broker URL is not a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{key}={value} in the broker URL is outside {low}..{high}")
    return value


def _seconds(options: dict[str, str], key: str) -> float | None:
    raw = options.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} in the broker URL is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{key} in the broker URL must be positive")
    return value


def with_tls_files(
    url: str, *, cafile: str | None, certfile: str | None, keyfile: str | None
) -> str:
    """``url`` with these files in its query, unless the URL names its own already."""
    wanted = {"cafile": cafile, "certfile": certfile, "keyfile": keyfile}
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    extra = {key: value for key, value in wanted.items() if value and key not in options}
    if not extra:
        return url
    query = urlencode({**options, **extra})
    return parts._replace(query=query).geturl()
