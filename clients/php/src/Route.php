<?php

declare(strict_types=1);

namespace Rabbitry;

/**
 * Where a message goes: an exchange ('' is the default exchange) and a routing key. ``queue``
 * names the outbox's registry entry (``rabbitry queues list``) the message belongs to, so that
 * ``rabbitry requeue NAME`` finds it when it had to be stored; without it a stored message is
 * filed under the one registry entry publishing to that exchange and key, else under
 * ``<exchange>/<routing key>``, as the Python side files them.
 */
final class Route
{
    public function __construct(
        public readonly string $exchange,
        public readonly string $routingKey,
        public readonly ?string $queue = null,
    ) {
    }

    /** Straight to ``$queue`` through the default exchange. */
    public static function toQueue(string $queue): self
    {
        return new self('', $queue);
    }
}
