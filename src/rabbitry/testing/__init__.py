"""An in-memory broker for unit tests of handlers, publishers and workers.

::

    from rabbitry.testing import MemoryBroker

    broker = MemoryBroker(topology)
    async with broker.running(worker):
        await broker.publisher().publish(message, Route("", queue))
        await broker.drain(retries=True)
    assert broker.get_all(dlq_name(queue)) == []

See ``docs/testing.md``. It loads no web framework, ORM or CLI code.
"""

from __future__ import annotations

from rabbitry.testing.broker import MemoryBroker
from rabbitry.testing.queues import QueuedMessage
from rabbitry.testing.routing import topic_matches

__all__ = ["MemoryBroker", "QueuedMessage", "topic_matches"]
