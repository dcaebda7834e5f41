"""Opening an AMQP connection for :class:`~rabbitry.amqp.link.Link`: URL, auth, tuning.

Pure: each step turns the broker's method into the frames that answer it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from pamqp import commands, common

from rabbitry._version import __version__
from rabbitry.amqp import wire

CAPABILITIES: common.FieldTable = {
    "publisher_confirms": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    # Without it a wrong password is a bare TCP close instead of a 403 with a reason.
    "authentication_failure_close": True,
}


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom to connect, parsed from ``amqp://user:pass@host:port/vhost``."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    vhost: str

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "amqp":
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}: only amqp:// is")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or 5672,
            user=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost=unquote(path) or "/",
        )


def start_ok(start: commands.Connection.Start, endpoint: Endpoint, name: str) -> bytes:
    """Answer Connection.Start with PLAIN credentials; ValueError if PLAIN is not offered."""
    if "PLAIN" not in start.mechanisms.split():
        raise ValueError(f"the broker offers no PLAIN authentication: {start.mechanisms}")
    properties: common.FieldTable = {
        "product": "rabbitry",
        "version": __version__,
        "connection_name": name,
        "capabilities": CAPABILITIES,
    }
    response = f"\0{endpoint.user}\0{endpoint.password}"
    return wire.method_frame(0, commands.Connection.StartOk(properties, "PLAIN", response, "en_US"))


def tune_ok(
    tune: commands.Connection.Tune, endpoint: Endpoint, heartbeat: int
) -> tuple[bytes, int, int]:
    """Answer Connection.Tune and open the vhost: (frames, frame_max, heartbeat seconds).

    The broker's frame_max and channel_max are taken as they are; the heartbeat is the lower
    of both sides', and 0 (off) only if we ask for 0.
    """
    frame_max = tune.frame_max or 131072
    server = tune.heartbeat
    agreed = min(heartbeat, server) if heartbeat and server else heartbeat
    frames = wire.method_frame(
        0, commands.Connection.TuneOk(tune.channel_max, frame_max, agreed)
    ) + wire.method_frame(0, commands.Connection.Open(endpoint.vhost))
    return frames, frame_max, agreed
