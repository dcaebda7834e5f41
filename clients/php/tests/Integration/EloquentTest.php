<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Integration;

use Illuminate\Database\Capsule\Manager as Capsule;
use Rabbitry\Events\ActingUser;
use Rabbitry\Events\ChangeEvents;
use Rabbitry\Laravel\ChangeRecorder;
use Rabbitry\Message;
use Rabbitry\Publisher;
use Rabbitry\Tests\Support\BrokerTestCase;
use Rabbitry\Tests\Support\Eloquent;
use Rabbitry\Tests\Support\Env;
use Rabbitry\Tests\Support\Task;

/**
 * The Eloquent trait on an SQLite model: change events reach the broker after the commit,
 * and a rollback sends nothing. The events are read from a queue bound to ``<ns>.events``.
 */
final class EloquentTest extends BrokerTestCase
{
    private Capsule $db;
    private string $events;

    protected function setUp(): void
    {
        parent::setUp();
        $this->db = Eloquent::boot();
        $this->events = $this->queue('events', [[$this->ns . '.events', '#']]);
        ChangeRecorder::publishWith(new ChangeEvents(new Publisher(Env::amqpUrl()), $this->ns));
    }

    protected function tearDown(): void
    {
        ActingUser::resolveUsing(null);
        parent::tearDown();
    }

    public function testCommittedChangesArePublishedAfterTheCommitWithOnlyTheChangedAttributes(): void
    {
        ActingUser::resolveUsing(static fn (): int => 42);
        $connection = $this->db->getConnection();

        $connection->beginTransaction();
        $task = Task::create(['title' => 'Write docs', 'secret' => 's3cret']);
        $task->update(['done' => true]);
        self::assertSame(0, $this->depth($this->events), 'an event left before the commit');
        $connection->commit();
        $task->delete();

        $events = array_map(static fn ($m): Message => Message::fromAmqp($m), $this->receive($this->events, 3));
        [$insert, $update, $delete] = $events;
        self::assertSame(['insert', 'update', 'delete'], array_map(static fn (Message $m): string => $m->type, $events));
        self::assertSame(['App\Models\Task', $task->id, 42], [$insert->payload['entity'], $insert->payload['id'], $insert->payload['user']]);
        self::assertSame(['title' => 'Write docs', 'id' => $task->id], array_intersect_key($insert->payload['data'], ['title' => 1, 'id' => 1]));
        self::assertArrayNotHasKey('secret', $insert->payload['data'], 'a hidden attribute left the model');
        // updated_at is there too when the clock passed a second between the two saves.
        self::assertSame(['done'], array_values(array_diff(array_keys($update->payload['data']), ['updated_at'])));
        self::assertTrue($update->payload['data']['done']); // cast as the model casts it
        self::assertSame(['entity' => 'App\Models\Task', 'id' => $task->id, 'user' => 42], $delete->payload);
    }

    public function testARollbackPublishesNothingAndASavepointRollbackOnlyItsOwnChanges(): void
    {
        $connection = $this->db->getConnection();
        $marker = $this->queue('marker', [[$this->ns . '.events', 'delete']]);

        $connection->beginTransaction();
        Task::create(['title' => 'rolled back']);
        $connection->rollBack();

        $kept = $connection->transaction(static function () use ($connection): Task {
            $kept = Task::create(['title' => 'kept']);
            $connection->beginTransaction(); // a savepoint
            Task::create(['title' => 'savepoint rolled back']);
            $connection->rollBack();
            $connection->transaction(static fn () => Task::create(['title' => 'savepoint committed']));

            return $kept;
        });
        $kept->delete(); // outside any transaction: at once; it marks the end of the events

        $this->receive($marker, 1);
        $events = array_map(static fn ($m): Message => Message::fromAmqp($m), $this->receive($this->events, 3));
        self::assertSame(
            [['insert', 'kept'], ['insert', 'savepoint committed'], ['delete', null]],
            array_map(static fn (Message $m): array => [$m->type, $m->payload['data']['title'] ?? null], $events),
        );
        self::assertSame(0, $this->depth($this->events));
        self::assertSame(['system', 'system', 'system'], array_map(static fn (Message $m): int|string => $m->payload['user'], $events));
    }

    public function testTheActingUserIsTheOneAtTheTimeOfTheChange(): void
    {
        $connection = $this->db->getConnection();

        $connection->transaction(static function (): void {
            ActingUser::as(7, static fn () => Task::create(['title' => 'by 7']));
            Task::create(['title' => 'by system']);
        });

        $events = array_map(static fn ($m): Message => Message::fromAmqp($m), $this->receive($this->events, 2));
        self::assertSame([7, 'system'], array_map(static fn (Message $m): int|string => $m->payload['user'], $events));
    }
}
