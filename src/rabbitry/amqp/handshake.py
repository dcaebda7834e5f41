"""Opening an AMQP connection for :class:`~rabbitry.amqp.link.Link`: auth and tuning.

Pure: each step turns the broker's method into the frames that answer it. Where to connect
and with which options is :class:`~rabbitry.amqp.url.Endpoint`'s.
"""

from __future__ import annotations

from pamqp import commands, common

from rabbitry._version import __version__
from rabbitry.amqp import wire
from rabbitry.amqp.url import Endpoint

__all__ = ["CAPABILITIES", "Endpoint", "start_ok", "tune_ok"]

CAPABILITIES: common.FieldTable = {
    "publisher_confirms": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    # The broker tells us when a memory or disk alarm stops it reading our publishes, so
    # publishers can go to their fallback at once instead of waiting for a timeout.
    "connection.blocked": True,
    # Without it a wrong password is a bare TCP close instead of a 403 with a reason.
    "authentication_failure_close": True,
}


def start_ok(start: commands.Connection.Start, endpoint: Endpoint, name: str) -> bytes:
    """Answer Connection.Start with the endpoint's mechanism (PLAIN or EXTERNAL).

    ``ValueError`` when the broker does not offer it.
    """
    offered = start.mechanisms.split()
    if endpoint.auth not in offered:
        raise ValueError(f"the broker offers no {endpoint.auth} authentication: {start.mechanisms}")
    properties: common.FieldTable = {
        "product": "rabbitry",
        "version": __version__,
        "connection_name": f"{endpoint.name}:{name}" if endpoint.name else name,
        "capabilities": CAPABILITIES,
    }
    # EXTERNAL: the TLS client certificate is the identity; the response is empty.
    response = "" if endpoint.auth == "EXTERNAL" else f"\0{endpoint.user}\0{endpoint.password}"
    method = commands.Connection.StartOk(properties, endpoint.auth, response, "en_US")
    return wire.method_frame(0, method)


def tune_ok(
    tune: commands.Connection.Tune, endpoint: Endpoint, heartbeat: int
) -> tuple[bytes, int, int]:
    """Answer Connection.Tune and open the vhost: (frames, frame_max, heartbeat seconds).

    frame_max and channel_max are the lower of the broker's and the URL's (0 is "no limit");
    the heartbeat is the lower of both sides' (the URL's, else ``heartbeat``), and 0 (off)
    only if we ask for 0.
    """
    frame_max = _lower(tune.frame_max or 131072, endpoint.frame_max)
    channel_max = _lower(tune.channel_max, endpoint.channel_max)
    ours = heartbeat if endpoint.heartbeat is None else endpoint.heartbeat
    server = tune.heartbeat
    agreed = min(ours, server) if ours and server else ours
    frames = wire.method_frame(
        0, commands.Connection.TuneOk(channel_max, frame_max, agreed)
    ) + wire.method_frame(0, commands.Connection.Open(endpoint.vhost))
    return frames, frame_max, agreed


def _lower(theirs: int, ours: int | None) -> int:
    if not ours:
        return theirs
    return min(theirs, ours) if theirs else ours
