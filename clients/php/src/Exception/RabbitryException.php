<?php

declare(strict_types=1);

namespace Rabbitry\Exception;

/**
 * Every error this package raises. The tree:
 *
 *     RabbitryException
 *     ├── MessageError   a message that cannot be encoded or read (bad JSON, missing rr_job, bad change event)
 *     ├── PublishFailed  the broker did not confirm a message and no outbox took it (nack, return, timeout, down)
 *     └── StorageError   the outbox could not store a message the broker did not take
 *
 * Errors of php-amqplib and PDO never reach the caller: they are translated, the original
 * kept as the previous exception.
 */
class RabbitryException extends \RuntimeException
{
}
