"""Rabbitry: an asyncio messaging platform on RabbitMQ.

Everything a library user needs is importable from here::

    from rabbitry import Message, Publisher, Route, Worker, Subscription, Retry, Reject

The rest of the package (``rabbitry.app``, the parts, ``rabbitry.amqp``) is the runnable system
and its internals.

``import rabbitry`` itself loads nothing but the error tree: each name is imported from its
module on first use (PEP 562), so that a CLI command, or a script that needs one class, does
not pay for the broker client and pydantic-settings it does not use (0.3 s of imports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rabbitry._version import __version__
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
    RequestError,
    RequestFailed,
    RequestTimeout,
    ServiceCrashed,
    StorageError,
)
from rabbitry.exports import lazy_exports

if TYPE_CHECKING:
    from rabbitry.config import Settings, load_settings
    from rabbitry.messaging import (
        AmqpSettings,
        AnyHandler,
        BatchHandler,
        Binding,
        Declarer,
        Exchange,
        ExchangeType,
        Fallback,
        Handler,
        Message,
        Middleware,
        PayloadError,
        Publisher,
        PublishNext,
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
        Tracing,
        Worker,
        dlq_name,
        retry_queue_name,
        run_services,
        serve,
        work_queue,
    )

_LAZY = {
    "Settings": "rabbitry.config",
    "load_settings": "rabbitry.config",
    "AmqpSettings": "rabbitry.messaging",
    "BatchHandler": "rabbitry.messaging",
    "Binding": "rabbitry.messaging",
    "Declarer": "rabbitry.messaging",
    "Exchange": "rabbitry.messaging",
    "ExchangeType": "rabbitry.messaging",
    "Fallback": "rabbitry.messaging",
    "Handler": "rabbitry.messaging",
    "Message": "rabbitry.messaging",
    "Publisher": "rabbitry.messaging",
    "PublishResult": "rabbitry.messaging",
    "PublishStatus": "rabbitry.messaging",
    "Queue": "rabbitry.messaging",
    "QueueType": "rabbitry.messaging",
    "Reject": "rabbitry.messaging",
    "Retry": "rabbitry.messaging",
    "RetryPolicy": "rabbitry.messaging",
    "Route": "rabbitry.messaging",
    "Service": "rabbitry.messaging",
    "Subscription": "rabbitry.messaging",
    "Topology": "rabbitry.messaging",
    "Worker": "rabbitry.messaging",
    "dlq_name": "rabbitry.messaging",
    "retry_queue_name": "rabbitry.messaging",
    "run_services": "rabbitry.messaging",
    "serve": "rabbitry.messaging",
    "work_queue": "rabbitry.messaging",
    "AnyHandler": "rabbitry.messaging",
    "Middleware": "rabbitry.messaging",
    "PayloadError": "rabbitry.messaging",
    "PublishNext": "rabbitry.messaging",
    "Tracing": "rabbitry.messaging",
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    # The public names, loaded or not, and no helper of this module (lazy_exports).
    return sorted({*__all__, *(name for name in globals() if name.startswith("_"))})


__all__ = [
    "AmqpSettings",
    "AnyHandler",
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
    "Middleware",
    "NotFound",
    "PayloadError",
    "PublishFailed",
    "PublishNacked",
    "PublishNext",
    "PublishResult",
    "PublishStatus",
    "PublishTimeout",
    "PublishUnroutable",
    "Publisher",
    "Queue",
    "QueueType",
    "RabbitryError",
    "Reject",
    "RequestError",
    "RequestFailed",
    "RequestTimeout",
    "Retry",
    "RetryPolicy",
    "Route",
    "Service",
    "ServiceCrashed",
    "Settings",
    "StorageError",
    "Subscription",
    "Topology",
    "Tracing",
    "Worker",
    "__version__",
    "dlq_name",
    "load_settings",
    "retry_queue_name",
    "run_services",
    "serve",
    "work_queue",
]
