"""What library users touch: messages, topology, publishing, consuming, workers.

Everything here is re-exported by :mod:`rabbitry`; import it from there. This package loads no
web framework, ORM or CLI code.
"""

from __future__ import annotations

from rabbitry.amqp.declarer import Declarer
from rabbitry.messaging.envelope import Message
from rabbitry.messaging.middleware import Middleware, PublishNext
from rabbitry.messaging.payloads import AnyHandler, Handler, PayloadError
from rabbitry.messaging.publisher import Fallback, Publisher, PublishResult, PublishStatus, Route
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.service import Service, run_services, serve
from rabbitry.messaging.settings import AmqpSettings, QueueType
from rabbitry.messaging.settlement import Reject, Retry
from rabbitry.messaging.subscription import BatchHandler, Subscription
from rabbitry.messaging.topology import (
    Binding,
    Exchange,
    ExchangeType,
    Queue,
    Topology,
    dlq_name,
    retry_queue_name,
    work_queue,
)
from rabbitry.messaging.tracing import Tracing
from rabbitry.messaging.worker import Worker

__all__ = [
    "AmqpSettings",
    "AnyHandler",
    "BatchHandler",
    "Binding",
    "Declarer",
    "Exchange",
    "ExchangeType",
    "Fallback",
    "Handler",
    "Message",
    "Middleware",
    "PayloadError",
    "PublishNext",
    "PublishResult",
    "PublishStatus",
    "Publisher",
    "Queue",
    "QueueType",
    "Reject",
    "Retry",
    "RetryPolicy",
    "Route",
    "Service",
    "Subscription",
    "Topology",
    "Tracing",
    "Worker",
    "dlq_name",
    "retry_queue_name",
    "run_services",
    "serve",
    "work_queue",
]
