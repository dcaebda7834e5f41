"""The nodes of a cluster URL, one URL each, so an operator's check can reach every node alone.

``amqp://u:p@h1:5672,h2:5672/vhost?name=x`` gives ``h1:5672`` → ``amqp://u:p@h1:5672/vhost?name=x``
and the same for ``h2``: the credentials, vhost, scheme (TLS) and options stay as written, so each
node is reached exactly as the processes reach it.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from rabbitry.amqp.url import Endpoint
from rabbitry.errors import ConfigError


def node_urls(url: str) -> list[tuple[str, str]]:
    """``(host:port, single-host URL)`` for each host of ``url``, in the URL's order."""
    try:
        endpoint = Endpoint.from_url(url)
    except ValueError as exc:
        raise ConfigError(f"broker URL: {exc}") from None
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    result = []
    for node in endpoint.candidates(start=0):  # start=0: the URL's own order
        netloc = f"{userinfo}{at}{node.where}"
        result.append((node.where, urlunsplit(parts._replace(netloc=netloc))))
    return result
