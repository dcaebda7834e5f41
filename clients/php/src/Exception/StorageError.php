<?php

declare(strict_types=1);

namespace Rabbitry\Exception;

/** The outbox could not store a message the broker did not take: nothing was stored. */
final class StorageError extends RabbitryException
{
}
