<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Integration;

use Rabbitry\Events\ActingUser;
use Rabbitry\Events\ChangeEvents;
use Rabbitry\Laravel\ChangeRecorder;
use Rabbitry\Publisher;
use Rabbitry\Tests\Support\BrokerTestCase;
use Rabbitry\Tests\Support\Databases;
use Rabbitry\Tests\Support\Eloquent;
use Rabbitry\Tests\Support\Env;
use Rabbitry\Tests\Support\Rabbitry;
use Rabbitry\Tests\Support\Task;

use function Rabbitry\publish_change;

/**
 * End to end through Rabbitry's Python side: PHP publishes change events (the Eloquent trait
 * and the plain function), `rabbitry worker workflow` stores them in the event store with
 * their versions, and `rabbitry events history` reads them back.
 */
final class WorkflowTest extends BrokerTestCase
{
    public function testTheWorkflowModuleStoresPhpsChangeEventsWithTheirVersions(): void
    {
        [$pdo, $url, $drop] = Databases::create('sqlite', $this->tmp);
        $this->defer($drop);
        $rabbitry = new Rabbitry($this->ns, $url, $this->tmp);
        $rabbitry->ok(['db', 'upgrade']);
        $rabbitry->ok(['topology', 'declare']);
        $publisher = new Publisher(Env::amqpUrl());

        // The Eloquent trait, in an app database of its own.
        $db = Eloquent::boot();
        ChangeRecorder::publishWith(new ChangeEvents($publisher, $this->ns));
        ActingUser::resolveUsing(static fn (): int => 42);
        $this->defer(static fn () => ActingUser::resolveUsing(null));
        $task = $db->getConnection()->transaction(static fn (): Task => Task::create(['title' => 'Écrire la doc']));
        $task->update(['done' => true]);
        ActingUser::resolveUsing(null);
        $task->delete();
        // The plain function, for code without Eloquent.
        publish_change($publisher, 'insert', 'App\Models\Invoice', 9001, ['total' => 12.5, 'lines' => [['sku' => 'a', 'qty' => 2]]], 7, $this->ns);
        publish_change($publisher, 'update', 'App\Models\Invoice', 9001, ['total' => 10.0], 7, $this->ns);

        $rabbitry->start(['worker', 'workflow'], $this->tmp . '/workflow.log');
        $this->defer(static fn () => $rabbitry->stopAll());
        $this->waitForStored($pdo, 5);
        $tasks = $this->history($rabbitry, 'App\Models\Task', $task->id);
        $invoices = $this->history($rabbitry, 'App\Models\Invoice', 9001);

        self::assertSame(
            [[1, 'insert', 42], [2, 'update', 42], [3, 'delete', 'system']],
            array_map(static fn (array $e): array => [$e['version'], $e['type'], $e['user']], $tasks),
        );
        self::assertSame('Écrire la doc', $tasks[0]['data']['title']);
        self::assertSame(['done'], array_values(array_diff(array_keys($tasks[1]['data']), ['updated_at'])));
        self::assertNull($tasks[2]['data']);
        self::assertSame(
            [[1, 'insert', 7, ['total' => 12.5, 'lines' => [['sku' => 'a', 'qty' => 2]]]], [2, 'update', 7, ['total' => 10.0]]],
            array_map(static fn (array $e): array => [$e['version'], $e['type'], $e['user'], $e['data']], $invoices),
        );
        $state = json_decode($rabbitry->ok(['events', 'state', 'App\Models\Invoice', '9001']), true, 512, JSON_THROW_ON_ERROR);
        self::assertSame([2, ['total' => 10.0, 'lines' => [['sku' => 'a', 'qty' => 2]]]], [$state['version'], $state['data']]);
    }

    /** Wait (60 s at most) until the worker stored ``$count`` events: a cheap look at its table. */
    private function waitForStored(\PDO $pdo, int $count): void
    {
        $deadline = microtime(true) + 60;
        $stored = 0;
        while (microtime(true) < $deadline) {
            $stored = (int) $pdo->query('SELECT COUNT(*) FROM event_store')->fetchColumn();
            if ($stored >= $count) {
                return;
            }
            usleep(100_000);
        }
        self::fail(sprintf("%d of %d event(s) stored within 60s; worker log:\n%s", $stored, $count, (string) @file_get_contents($this->tmp . '/workflow.log')));
    }

    /** @return list<array<string, mixed>> the entity's history as `rabbitry events history` prints it */
    private function history(Rabbitry $rabbitry, string $entity, int $id): array
    {
        $lines = array_filter(explode("\n", trim($rabbitry->ok(['events', 'history', $entity, (string) $id]))));

        return array_map(static fn (string $l): array => json_decode($l, true, 512, JSON_THROW_ON_ERROR), array_values($lines));
    }
}
