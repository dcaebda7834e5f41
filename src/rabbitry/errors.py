"""Rabbitry's exception tree. Callers catch these, never aio-pika's, aiormq's or SQLAlchemy's.

RabbitryError
├── ConfigError                 bad settings or rabbitry.yaml
├── BrokerError                 RabbitMQ could not do what was asked
│   ├── BrokerUnavailable       no connection (refused, lost, circuit open, rabbit_active=false)
│   └── PublishFailed           the broker answered, but not with a confirm
│       ├── PublishNacked       basic.nack
│       ├── PublishUnroutable   mandatory message returned: no queue bound for it
│       └── PublishTimeout      no confirm within the bounded timeout
├── MessageError                a message that cannot be decoded or does not fit its schema
├── Invalid                     a request's value is refused (a name, a time, a filter); also
│                               a ValueError
├── Refused                     allowed to ask, but not this (a queue closed to manual sends)
├── RequestError                a request (``Publisher.request``) got no reply
│   ├── RequestTimeout          none in time (also a TimeoutError)
│   └── RequestFailed           the handler failed it: dead-lettered, with this reason
├── StorageError                the database failed (the outbox could not persist either)
├── NotFound                    a named thing (queue, entity, tenant) does not exist
├── Conflict                    it exists already (a tenant, a username in its tenant)
└── ServiceCrashed              a service of the process failed; the others were stopped
"""

from __future__ import annotations


class RabbitryError(Exception):
    """Base of every error Rabbitry raises on purpose."""


class ConfigError(RabbitryError):
    """Settings or the configuration file are invalid."""


class BrokerError(RabbitryError):
    """RabbitMQ could not do what was asked."""


class BrokerUnavailable(BrokerError):
    """No usable connection to RabbitMQ."""


class PublishFailed(BrokerError):
    """The broker did not confirm a publish."""


class PublishNacked(PublishFailed):
    """The broker answered basic.nack."""


class PublishUnroutable(PublishFailed):
    """A mandatory message was returned because no queue is bound for it."""


class PublishTimeout(PublishFailed):
    """No confirm arrived within the publish timeout."""


class MessageError(RabbitryError):
    """A message is malformed: bad JSON, a missing ``rr_job``, a schema error."""


class Invalid(RabbitryError, ValueError):
    """A value given to Rabbitry is refused: a malformed name, time, filter or id. Also a
    ``ValueError``, as every such check raised before the tree had this branch."""


class Refused(RabbitryError):
    """The caller may not do this with that (a queue that takes no manual sends)."""


class RequestError(RabbitryError):
    """A request got no reply."""


class RequestTimeout(RequestError, TimeoutError):
    """No reply arrived within the request's timeout."""


class RequestFailed(RequestError):
    """The request's handler failed and the request was dead-lettered; ``str()`` says why."""


class StorageError(RabbitryError):
    """The database failed."""


class NotFound(RabbitryError):
    """A named object does not exist."""


class Conflict(RabbitryError):
    """The thing to create exists already."""


class ServiceCrashed(RabbitryError):
    """A service stopped with an error; the process stopped the others and exits non-zero."""
