"""The contingency outbox: messages the broker could not take, kept in ``outbox_messages`` until
the relay or ``rabbitry requeue`` sends them; the queue registry; sends by hand.

What other parts use (the events part stages its change events here, the back-office shows and
requeues them) is exported here; the modules behind it are the part's own.
"""

from pathlib import Path

from rabbitry.outbox.exchanges import ExchangeCheck
from rabbitry.outbox.fallback import OnDemandOutbox
from rabbitry.outbox.filters import FilterError, Origin, RequeueFilter, parse_filter
from rabbitry.outbox.manual import ManualInsertionRefused, send_manually
from rabbitry.outbox.message import OutboxMessage, OutboxQuery, Page, PageKey, State
from rabbitry.outbox.registry import QueueInfo, get_queue, list_queues, manual_queues
from rabbitry.outbox.relay import RelayService
from rabbitry.outbox.requeue import (
    MAX_SELECTED,
    RequeueOptions,
    RequeueReport,
    RowOutcome,
    requeue,
    requeue_messages,
    selected,
)
from rabbitry.outbox.store import MAX_PAGE, Outbox

MIGRATIONS = Path(__file__).with_name("migrations")
"""This part's Alembic revisions (a version location)."""

__all__ = [
    "MAX_PAGE",
    "MAX_SELECTED",
    "MIGRATIONS",
    "ExchangeCheck",
    "FilterError",
    "ManualInsertionRefused",
    "OnDemandOutbox",
    "Origin",
    "Outbox",
    "OutboxMessage",
    "OutboxQuery",
    "Page",
    "PageKey",
    "QueueInfo",
    "RelayService",
    "RequeueFilter",
    "RequeueOptions",
    "RequeueReport",
    "RowOutcome",
    "State",
    "get_queue",
    "list_queues",
    "manual_queues",
    "parse_filter",
    "requeue",
    "requeue_messages",
    "selected",
    "send_manually",
]
