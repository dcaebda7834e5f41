"""The contingency outbox: messages the broker could not take, kept in ``outbox_messages`` until
the relay or ``rabbitry requeue`` sends them; the queue registry; sends by hand.

What other parts use (the events part stages its change events here, the back-office shows and
requeues them) is exported here; the modules behind it are the part's own.

Loaded on first use (PEP 562): importing one of the part's light modules (a pure one, as
the CLI's argument checks do) does not load the database code behind these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rabbitry.exports import lazy_exports

if TYPE_CHECKING:
    from rabbitry.outbox.exchanges import ExchangeCheck
    from rabbitry.outbox.fallback import OnDemandOutbox
    from rabbitry.outbox.filters import Failure, FilterError, Origin, RequeueFilter, parse_filter
    from rabbitry.outbox.manual import ManualInsertionRefused, send_manually
    from rabbitry.outbox.message import OutboxMessage, OutboxQuery, Page, PageKey, State
    from rabbitry.outbox.registry import QueueInfo, get_queue, list_queues, manual_queues
    from rabbitry.outbox.relay import RelayService
    from rabbitry.outbox.report import RequeueReport, RowOutcome
    from rabbitry.outbox.requeue import (
        MAX_SELECTED,
        RequeueOptions,
        requeue,
        requeue_messages,
        selected,
        without_circuit,
    )
    from rabbitry.outbox.store import MAX_PAGE, Outbox

MIGRATIONS = Path(__file__).with_name("migrations")
"""This part's Alembic revisions (a version location)."""

_EXPORTS = {
    "ExchangeCheck": "rabbitry.outbox.exchanges",
    "OnDemandOutbox": "rabbitry.outbox.fallback",
    "Failure": "rabbitry.outbox.filters",
    "FilterError": "rabbitry.outbox.filters",
    "Origin": "rabbitry.outbox.filters",
    "RequeueFilter": "rabbitry.outbox.filters",
    "parse_filter": "rabbitry.outbox.filters",
    "ManualInsertionRefused": "rabbitry.outbox.manual",
    "send_manually": "rabbitry.outbox.manual",
    "OutboxMessage": "rabbitry.outbox.message",
    "OutboxQuery": "rabbitry.outbox.message",
    "Page": "rabbitry.outbox.message",
    "PageKey": "rabbitry.outbox.message",
    "State": "rabbitry.outbox.message",
    "QueueInfo": "rabbitry.outbox.registry",
    "get_queue": "rabbitry.outbox.registry",
    "list_queues": "rabbitry.outbox.registry",
    "manual_queues": "rabbitry.outbox.registry",
    "RelayService": "rabbitry.outbox.relay",
    "MAX_SELECTED": "rabbitry.outbox.requeue",
    "RequeueOptions": "rabbitry.outbox.requeue",
    "RequeueReport": "rabbitry.outbox.report",
    "RowOutcome": "rabbitry.outbox.report",
    "requeue": "rabbitry.outbox.requeue",
    "requeue_messages": "rabbitry.outbox.requeue",
    "selected": "rabbitry.outbox.requeue",
    "without_circuit": "rabbitry.outbox.requeue",
    "MAX_PAGE": "rabbitry.outbox.store",
    "Outbox": "rabbitry.outbox.store",
}


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = [
    "MAX_PAGE",
    "MAX_SELECTED",
    "MIGRATIONS",
    "ExchangeCheck",
    "Failure",
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
    "without_circuit",
]
