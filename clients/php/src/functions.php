<?php

declare(strict_types=1);

namespace Rabbitry;

use Rabbitry\Events\ChangeEvent;
use Rabbitry\Events\ChangeEvents;

if (!function_exists('Rabbitry\publish_change')) {
    /**
     * Publish one change event (``insert``, ``update`` or ``delete``) to ``<namespace>.events``.
     *
     * @param ?array<string, mixed> $data the attributes (an update: the changed ones); null only for a delete
     * @param int|string|null $user the acting user's id or ``"system"``; null: the current acting user
     */
    function publish_change(Publisher $publisher, string $type, string $entity, int $id, ?array $data = null, int|string|null $user = null, string $namespace = 'rabbitry'): PublishResult
    {
        return (new ChangeEvents($publisher, $namespace))->publish(new ChangeEvent($type, $entity, $id, $data, $user));
    }
}
