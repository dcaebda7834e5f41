<?php

declare(strict_types=1);

namespace Rabbitry\Exception;

use Rabbitry\PublishResult;

/**
 * The broker did not confirm a message (nacked, returned as unroutable, no confirm in time,
 * unreachable) and no outbox was there to keep it. Nothing of the message is stored.
 */
final class PublishFailed extends RabbitryException
{
    /** @param list<PublishResult> $results every message of the call, failed or not */
    public function __construct(string $message, public readonly array $results = [], ?\Throwable $previous = null)
    {
        parent::__construct($message, 0, $previous);
    }
}
