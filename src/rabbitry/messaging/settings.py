"""What the messaging library needs to know, and nothing of the application around it.

:class:`AmqpSettings` is the broker and its timeouts; the retry policy is
:class:`~rabbitry.messaging.retry.RetryPolicy`. The application's
:class:`~rabbitry.config.Settings` builds both from its environment; a library user builds
them directly: ``AmqpSettings(url="amqp://user:pw@host/vhost")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import urlsplit, urlunsplit

from rabbitry.amqp.url import with_tls_files
from rabbitry.errors import Invalid

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"

# Broker object names are built from these: a conservative alphabet keeps user input out of
# names that could collide or need quoting, and leaves "." free as Rabbitry's separator.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class QueueType(StrEnum):
    CLASSIC = "classic"
    QUORUM = "quorum"


def validate_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is safe inside a broker object name, else raise
    :class:`~rabbitry.errors.Invalid` (a ``ValueError``)."""
    if not NAME_PATTERN.fullmatch(value):
        raise Invalid(
            f"invalid {what} {value!r}: use 1-63 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    """The broker connection and the bounds of every wait on it.

    ``url`` is ``amqp://`` or ``amqps://`` (TLS) with the options of :mod:`rabbitry.amqp.url`
    in its query; ``ca_file``, ``cert_file`` and ``key_file`` go into that query unless it
    names its own, so every connection (publisher, consumers, declarer) reads them alike.
    ``active=False`` never contacts the broker: publishes go straight to the fallback.
    ``rpc_timeout`` bounds each call that waits for the broker's reply (qos, consume, cancel,
    declarations, close), so shutdown completes even when the broker stopped reading.
    ``pipeline_window`` is how many declarations a worker sends before waiting for the first
    reply (they go back to back, pipelined, and each reply is awaited at most ``rpc_timeout``
    after the one before it).
    ``strict_rr_job`` dead-letters a consumed message without ``rr_job`` instead of handing it
    to the default handler as RoadRunner's ``deduced_by_rr``.
    """

    url: str = field(default=DEFAULT_URL, repr=False)
    active: bool = True
    connect_timeout: float = 3.0
    publish_timeout: float = 5.0
    circuit_open_seconds: float = 5.0
    prefetch: int = 200
    concurrency: int = 32
    drain_timeout: float = 30.0
    strict_rr_job: bool = True
    queue_type: QueueType = QueueType.CLASSIC
    rpc_timeout: float = 10.0
    pipeline_window: int = 100
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.prefetch <= 65535:
            raise ValueError("prefetch must be between 1 and 65535")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.pipeline_window < 1:
            raise ValueError("pipeline_window must be at least 1")
        for name in ("connect_timeout", "publish_timeout", "drain_timeout", "rpc_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.ca_file or self.cert_file or self.key_file:
            url = with_tls_files(
                self.url, cafile=self.ca_file, certfile=self.cert_file, keyfile=self.key_file
            )
            object.__setattr__(self, "url", url)  # frozen: set once, here

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for logs."""
        return mask_password(self.url)

    def __repr__(self) -> str:
        return (
            f"AmqpSettings(url={self.safe_url!r}, active={self.active}, "
            f"publish_timeout={self.publish_timeout:g}, prefetch={self.prefetch})"
        )


def mask_password(url: str) -> str:
    """``url`` with its password as ``***``; the hosts (a cluster's several) as they are."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if not at or not has_password:
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))
