"""Opening a connection to a cluster: its hosts tried one at a time, in the order
:meth:`~rabbitry.amqp.url.Endpoint.candidates` gives, until one opens; which refusals end the
search at once, because every node would repeat them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from rabbitry.amqp.base import LinkClosed, LinkError
from rabbitry.amqp.url import Endpoint

T = TypeVar("T")

# Refusals that another node of the same cluster would repeat: access refused (credentials),
# not allowed (the vhost). Anything else (a node shutting down, a timeout) tries the next host.
_EVERY_NODE_REFUSES = frozenset({403, 530})


async def first_to_open(
    candidates: Sequence[Endpoint], open_one: Callable[[Endpoint], Awaitable[T]]
) -> T:
    """What ``open_one`` opens on the first of ``candidates`` (single-host endpoints) that
    opens. A lone host's failure, or a refusal every node would repeat, is raised as it is;
    when every host failed, :class:`LinkError` names each one's failure."""
    failures: list[str] = []
    for candidate in candidates:
        try:
            return await open_one(candidate)
        except LinkClosed as exc:
            if exc.reply_code in _EVERY_NODE_REFUSES or len(candidates) == 1:
                raise  # the cluster's users and vhosts are the same on every node
            failures.append(f"{candidate.where}: {exc}")
        except LinkError as exc:
            if len(candidates) == 1:
                raise
            failures.append(str(exc))
    raise LinkError(f"no broker host answered: {'; '.join(failures)}")
