<?php

declare(strict_types=1);

namespace Rabbitry;

/**
 * What became of one message: ``published`` (the broker confirmed it) or ``persisted`` (the
 * broker could not take it and the outbox stored it, with ``error`` saying why). A message
 * neither confirmed nor stored is never a result: it is a PublishFailed exception.
 */
final class PublishResult
{
    public const PUBLISHED = 'published';
    public const PERSISTED = 'persisted';
    public const FAILED = 'failed';

    public function __construct(
        public readonly string $id,
        public readonly string $status,
        public readonly ?string $error = null,
    ) {
    }

    public function published(): bool
    {
        return $this->status === self::PUBLISHED;
    }
}
