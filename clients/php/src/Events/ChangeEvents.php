<?php

declare(strict_types=1);

namespace Rabbitry\Events;

use Rabbitry\PublishResult;
use Rabbitry\Publisher;

/**
 * Publishes change events for code that does not use Eloquent:
 *
 *     $events = new ChangeEvents($publisher, 'rabbitry');
 *     $events->insert(Order::class, 7, ['total' => 10]);
 *     $events->update(Order::class, 7, ['total' => 12]);   // only what changed
 *     $events->delete(Order::class, 7);
 *
 * (or the function {@see \Rabbitry\publish_change()}). Publish after your transaction
 * committed: an event says the change happened.
 */
final class ChangeEvents
{
    public function __construct(private readonly Publisher $publisher, private readonly string $namespace = 'rabbitry')
    {
    }

    /** @param array<string, mixed> $data */
    public function insert(string $entity, int $id, array $data, int|string|null $user = null): PublishResult
    {
        return $this->publish(new ChangeEvent(ChangeEvent::INSERT, $entity, $id, $data, $user));
    }

    /** @param array<string, mixed> $changes the changed attributes only */
    public function update(string $entity, int $id, array $changes, int|string|null $user = null): PublishResult
    {
        return $this->publish(new ChangeEvent(ChangeEvent::UPDATE, $entity, $id, $changes, $user));
    }

    /** @param ?array<string, mixed> $data */
    public function delete(string $entity, int $id, ?array $data = null, int|string|null $user = null): PublishResult
    {
        return $this->publish(new ChangeEvent(ChangeEvent::DELETE, $entity, $id, $data, $user));
    }

    public function publish(ChangeEvent $event): PublishResult
    {
        return $this->publishMany([$event])[0];
    }

    /**
     * @param list<ChangeEvent> $events in order: the store versions them in publish order
     *
     * @return list<PublishResult>
     */
    public function publishMany(array $events): array
    {
        if ($events === []) {
            return [];
        }

        return $this->publisher->publishMany(array_map(fn (ChangeEvent $e): array => [$e->message(), $e->route($this->namespace)], $events));
    }
}
