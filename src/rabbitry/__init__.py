"""Rabbitry: an asyncio messaging platform on RabbitMQ.

Everything a library user needs is importable from here::

    from rabbitry import Message, Publisher, Route, Worker, Subscription, Retry, Reject

The rest of the package (``rabbitry.app``, the parts, ``rabbitry.amqp``) is the runnable system
and its internals.
"""

from __future__ import annotations

from rabbitry._version import __version__
from rabbitry.config import Settings, load_settings
from rabbitry.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    MessageError,
    NotFound,
    PublishFailed,
    PublishNacked,
    PublishTimeout,
    PublishUnroutable,
    RabbitryError,
    ServiceCrashed,
    StorageError,
)
from rabbitry.messaging import (
    AmqpSettings,
    BatchHandler,
    Binding,
    Declarer,
    Exchange,
    ExchangeType,
    Fallback,
    Handler,
    Message,
    Publisher,
    PublishResult,
    PublishStatus,
    Queue,
    QueueType,
    Reject,
    Retry,
    RetryPolicy,
    Route,
    Service,
    Subscription,
    Topology,
    Worker,
    dlq_name,
    retry_queue_name,
    run_services,
    serve,
    work_queue,
)

__all__ = [
    "AmqpSettings",
    "BatchHandler",
    "Binding",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "Declarer",
    "Exchange",
    "ExchangeType",
    "Fallback",
    "Handler",
    "Message",
    "MessageError",
    "NotFound",
    "PublishFailed",
    "PublishNacked",
    "PublishResult",
    "PublishStatus",
    "PublishTimeout",
    "PublishUnroutable",
    "Publisher",
    "Queue",
    "QueueType",
    "RabbitryError",
    "Reject",
    "Retry",
    "RetryPolicy",
    "Route",
    "Service",
    "ServiceCrashed",
    "Settings",
    "StorageError",
    "Subscription",
    "Topology",
    "Worker",
    "__version__",
    "dlq_name",
    "load_settings",
    "retry_queue_name",
    "run_services",
    "serve",
    "work_queue",
]
