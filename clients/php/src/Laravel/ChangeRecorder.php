<?php

declare(strict_types=1);

namespace Rabbitry\Laravel;

use Illuminate\Database\ConnectionInterface;
use Illuminate\Database\Eloquent\Model;
use Illuminate\Database\Events\TransactionBeginning;
use Illuminate\Database\Events\TransactionCommitted;
use Illuminate\Database\Events\TransactionRolledBack;
use Rabbitry\Events\ChangeEvent;
use Rabbitry\Events\ChangeEvents;
use Rabbitry\Exception\MessageError;

/**
 * Holds the change events of Eloquent models until their transaction commits.
 *
 * An event recorded outside a transaction is published at once (the statement has committed).
 * Inside one, it waits, per transaction level: committing a savepoint hands its events to the
 * enclosing level, committing the outermost transaction publishes them all, in order, in one
 * batch with publisher confirms; a rollback (of the transaction or of a savepoint) discards
 * what was recorded inside it. It follows the connection's own transaction events, so the
 * connection needs an event dispatcher, as Eloquent's model events do.
 *
 * A failure to publish after the commit is not hidden: with an outbox the events are stored
 * there, without one ``PublishFailed`` reaches the code that committed.
 */
final class ChangeRecorder
{
    private static ?self $instance = null;

    /** @var \Closure(): ChangeEvents */
    private \Closure $events;
    /** @var \WeakMap<ConnectionInterface, array<int, list<ChangeEvent>>> pending events by level */
    private \WeakMap $pending;
    /** @var \WeakMap<object, true> dispatchers listened to */
    private \WeakMap $hooked;

    /** @param callable(): ChangeEvents $events the publisher of events, made when first needed */
    private function __construct(callable $events)
    {
        $this->events = \Closure::fromCallable($events);
        $this->pending = new \WeakMap();
        $this->hooked = new \WeakMap();
    }

    /**
     * Where models' change events go: a ChangeEvents (or a factory of one, called on the first
     * event). The Laravel service provider calls this; call it yourself without Laravel.
     *
     * @param ChangeEvents|callable(): ChangeEvents $events
     */
    public static function publishWith(ChangeEvents|callable $events): void
    {
        self::$instance = new self($events instanceof ChangeEvents ? static fn (): ChangeEvents => $events : $events);
    }

    public static function instance(): self
    {
        return self::$instance ?? throw new \LogicException('Rabbitry change events are not configured: register Rabbitry\Laravel\RabbitryServiceProvider or call ChangeRecorder::publishWith()');
    }

    /** Record one change of ``$model`` (the PublishesChangeEvents trait calls this). */
    public function record(Model $model, string $type): void
    {
        $event = self::event($model, $type);
        if ($event === null) {
            return;
        }
        $connection = $model->getConnection();
        $level = $connection->transactionLevel();
        if ($level === 0) {
            $this->publish([$event]);

            return;
        }
        $this->listenTo($connection);
        $pending = $this->pending[$connection] ?? [];
        $pending[$level][] = $event;
        $this->pending[$connection] = $pending;
    }

    private static function event(Model $model, string $type): ?ChangeEvent
    {
        $key = $model->getKey();
        if (is_string($key) && preg_match('/^-?\d{1,18}$/', $key)) {
            $key = (int) $key;
        }
        if (!is_int($key)) {
            throw new MessageError(sprintf('%s has no integer key: change events need one', $model::class));
        }
        $entity = method_exists($model, 'changeEventEntity') ? $model->changeEventEntity() : $model::class;
        // Cast and serialised as the model's toArray() does, hidden attributes left out.
        $visible = $model->attributesToArray();
        $data = match ($type) {
            ChangeEvent::INSERT => array_intersect_key($visible, $model->getAttributes()),
            ChangeEvent::UPDATE => array_intersect_key($visible, $model->getChanges()),
            default => null,
        };
        if ($type === ChangeEvent::UPDATE && $data === []) {
            return null; // only hidden attributes changed: nothing a reader may see
        }

        return new ChangeEvent($type, $entity, $key, $data);
    }

    private function listenTo(ConnectionInterface $connection): void
    {
        $dispatcher = method_exists($connection, 'getEventDispatcher') ? $connection->getEventDispatcher() : null;
        if ($dispatcher === null) {
            throw new \LogicException('the database connection has no event dispatcher: change events cannot wait for the commit');
        }
        if (isset($this->hooked[$dispatcher])) {
            return;
        }
        $this->hooked[$dispatcher] = true;
        $dispatcher->listen(TransactionBeginning::class, function (TransactionBeginning $e): void {
            if ($e->connection->transactionLevel() === 1) {
                // Left over from a transaction whose commit failed without a rollback event.
                unset($this->pending[$e->connection]);
            }
        });
        $dispatcher->listen(TransactionCommitted::class, function (TransactionCommitted $e): void {
            $this->committed($e->connection);
        });
        $dispatcher->listen(TransactionRolledBack::class, function (TransactionRolledBack $e): void {
            $level = $e->connection->transactionLevel();
            $pending = $this->pending[$e->connection] ?? [];
            $this->pending[$e->connection] = array_filter($pending, static fn (int $l): bool => $l <= $level, ARRAY_FILTER_USE_KEY);
        });
    }

    private function committed(ConnectionInterface $connection): void
    {
        $pending = $this->pending[$connection] ?? [];
        if ($pending === []) {
            return;
        }
        $level = $connection->transactionLevel();
        // Everything above the level now open was inside the committed (sub)transaction.
        $moved = [];
        ksort($pending);
        foreach ($pending as $l => $events) {
            if ($l > $level) {
                array_push($moved, ...$events);
                unset($pending[$l]);
            }
        }
        if ($level > 0) {
            $pending[$level] = [...($pending[$level] ?? []), ...$moved];
            $this->pending[$connection] = $pending;

            return;
        }
        unset($this->pending[$connection]);
        $this->publish($moved);
    }

    /** @param list<ChangeEvent> $events */
    private function publish(array $events): void
    {
        if ($events !== []) {
            ($this->events)()->publishMany($events);
        }
    }
}
