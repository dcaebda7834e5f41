<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Integration;

use Rabbitry\Exception\PublishFailed;
use Rabbitry\Exception\StorageError;
use Rabbitry\Message;
use Rabbitry\Outbox;
use Rabbitry\PublishResult;
use Rabbitry\Publisher;
use Rabbitry\Route;
use Rabbitry\Tests\Support\BrokerTestCase;
use Rabbitry\Tests\Support\Databases;
use Rabbitry\Tests\Support\Env;
use Rabbitry\Tests\Support\Rabbitry;

/**
 * Contingency into Rabbitry's outbox, on both of Rabbitry's databases, migrated by Rabbitry:
 * the table layout PHP writes (the contract; tests/integration/test_outbox_php_contract.py
 * pins it on the Python side), the rows a failed publish leaves, and `rabbitry requeue`
 * delivering them once.
 */
final class OutboxTest extends BrokerTestCase
{
    /**
     * The columns of outbox_messages as PHP relies on them: name => [type, nullable].
     * Anything else in the table must be nullable or have a default (PHP does not write it).
     */
    private const CONTRACT = [
        'sqlite' => [
            'id' => ['INTEGER', false], 'queue' => ['VARCHAR(511)', false], 'exchange' => ['VARCHAR(255)', false],
            'routing_key' => ['VARCHAR(255)', false], 'body' => ['TEXT', false], 'headers' => ['JSON', false],
            'message_id' => ['VARCHAR(255)', false], 'created_at' => ['DATETIME', false], 'processed' => ['BOOLEAN', false],
            'attempts' => ['INTEGER', false], 'last_error' => ['TEXT', true], 'origin' => ['VARCHAR(16)', false],
        ],
        'postgresql' => [
            'id' => ['bigint', false], 'queue' => ['character varying(511)', false], 'exchange' => ['character varying(255)', false],
            'routing_key' => ['character varying(255)', false], 'body' => ['text', false], 'headers' => ['json', false],
            'message_id' => ['character varying(255)', false], 'created_at' => ['timestamp without time zone', false], 'processed' => ['boolean', false],
            'attempts' => ['integer', false], 'last_error' => ['text', true], 'origin' => ['character varying(16)', false],
        ],
    ];

    private \PDO $pdo;
    private Rabbitry $rabbitry;

    /** @return array{\PDO, Rabbitry} */
    private function database(string $kind): array
    {
        [$pdo, $url, $drop] = Databases::create($kind, $this->tmp);
        $this->defer(static function () use (&$pdo, $drop): void {
            $pdo = null;
            $drop();
        });
        $rabbitry = new Rabbitry($this->ns, $url, $this->tmp);
        $rabbitry->ok(['db', 'upgrade']);
        $this->pdo = $pdo;
        $this->rabbitry = $rabbitry;

        return [$pdo, $rabbitry];
    }

    /** @dataProvider backends */
    public function testTheTablePhpWritesIsTheOneRabbitryMigrates(string $kind): void
    {
        [$pdo] = $this->database($kind);
        $columns = [];
        if ($kind === 'sqlite') {
            foreach ($pdo->query('PRAGMA table_info(outbox_messages)') as $c) {
                $columns[$c['name']] = [$c['type'], !$c['notnull'], $c['dflt_value'] !== null];
            }
        } else {
            $rows = $pdo->query("SELECT column_name, is_nullable, column_default, CASE WHEN character_maximum_length IS NULL THEN data_type ELSE data_type || '(' || character_maximum_length || ')' END AS type FROM information_schema.columns WHERE table_name = 'outbox_messages'");
            foreach ($rows as $c) {
                $columns[$c['column_name']] = [$c['type'], $c['is_nullable'] === 'YES', $c['column_default'] !== null];
            }
        }

        foreach (self::CONTRACT[$kind] as $name => [$type, $nullable]) {
            self::assertArrayHasKey($name, $columns, "outbox_messages has no column $name");
            self::assertSame([$type, $nullable], array_slice($columns[$name], 0, 2), "column $name");
        }
        foreach (array_diff_key($columns, self::CONTRACT[$kind]) as $name => [, $nullable, $default]) {
            self::assertTrue($nullable || $default, "column $name is required, and PHP does not write it");
        }
    }

    /** @dataProvider backends */
    public function testABrokerThatIsDownLeavesPendingRowsThatRequeueDeliversOnce(string $kind): void
    {
        $this->database($kind);
        $queue = $this->queue('mail');
        $publisher = new Publisher(Env::deadAmqpUrl(), new Outbox($this->pdo));
        $first = new Message('App\Jobs\SendEmail', ['to' => 'é@example.com', 'n' => 1.0], headers: ['attempts' => ['0']], pipeline: 'emails', tenant: 'acme', extra: ['x-trace' => 'abc']);
        $second = new Message('App\Jobs\SendEmail', ['to' => 'b@example.com']);

        $results = $publisher->publishMany([[$first, Route::toQueue($queue)], [$second, Route::toQueue($queue)]]);

        self::assertSame([PublishResult::PERSISTED, PublishResult::PERSISTED], [$results[0]->status, $results[1]->status]);
        self::assertStringStartsWith('broker error: cannot connect', (string) $results[0]->error);
        $row = $this->pdo->query("SELECT * FROM outbox_messages WHERE message_id = '{$first->id}'")->fetch(\PDO::FETCH_ASSOC);
        self::assertSame(
            ["/$queue", '', $queue, $first->body(), 'contingency', '0', 'broker error'],
            [$row['queue'], $row['exchange'], $row['routing_key'], $row['body'], $row['origin'], (string) (int) $row['attempts'], substr((string) $row['last_error'], 0, 12)],
        );
        self::assertFalse((bool) $row['processed']);
        // SQLite keeps the text PHP wrote (SQLAlchemy's form, six digits); PostgreSQL prints a
        // timestamp without trailing zeros (.38977 for .389770, nothing for .000000).
        $fraction = $kind === 'sqlite' ? '\.\d{6}' : '(\.\d{1,6})?';
        self::assertMatchesRegularExpression("/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$fraction$/", $row['created_at']);

        // Rabbitry's own command lists and sends them: once, with their ids, bodies and headers.
        $listed = array_map(static fn (string $line): array => json_decode($line, true, 512, JSON_THROW_ON_ERROR), explode("\n", trim($this->rabbitry->ok(['outbox', 'list', '--state', 'pending', '--json']))));
        $byId = array_column($listed, null, 'message_id');
        self::assertSame([$second->id, $first->id], array_column($listed, 'message_id'));
        self::assertSame(
            ["/$queue", 'pending', 'App\Jobs\SendEmail', 'contingency', $first->body()],
            [$byId[$first->id]['queue'], $byId[$first->id]['state'], $byId[$first->id]['type'], $byId[$first->id]['origin'], $byId[$first->id]['body']],
        );
        $this->rabbitry->ok(['requeue']);
        $received = array_map(static fn ($m): Message => Message::fromAmqp($m), $this->receive($queue, 2));
        $again = $this->rabbitry->ok(['requeue']);

        self::assertSame([$first->id, $second->id], array_map(static fn (Message $m): string => $m->id, $received));
        [$got] = $received;
        self::assertSame(
            [$first->body(), ['attempts' => ['0']], 'emails', 'acme', ['x-trace' => 'abc'], 'App\Jobs\SendEmail'],
            [$got->rawBody, $got->headers, $got->pipeline, $got->tenant, $got->extra, $got->type],
        );
        self::assertSame(0, $this->depth($queue), "a second requeue sent again:\n$again");
        self::assertSame('0 pending', $this->pendingCount());
    }

    /** @dataProvider backends */
    public function testRabbitActiveFalseStoresWithoutTryingTheBroker(string $kind): void
    {
        $this->database($kind);
        $queue = $this->queue('off');
        $publisher = new Publisher(Env::amqpUrl(), new Outbox($this->pdo), rabbitActive: false);

        $result = $publisher->publish(new Message('t', ['a' => 1]), Route::toQueue($queue));

        self::assertSame([PublishResult::PERSISTED, 'rabbit_active is false: messages are stored, not sent'], [$result->status, $result->error]);
        self::assertSame(0, $this->depth($queue));
        self::assertSame('1 pending', $this->pendingCount());
    }

    public function testWithoutAnOutboxAFailedPublishIsAnException(): void
    {
        $this->expectException(PublishFailed::class);
        (new Publisher(Env::deadAmqpUrl()))->publish(new Message('t', []), Route::toQueue('q'));
    }

    public function testAnOutboxThatCannotStoreIsAnExceptionAndStoresNothing(): void
    {
        $pdo = new \PDO('sqlite::memory:'); // no Rabbitry tables there
        $pdo->setAttribute(\PDO::ATTR_ERRMODE, \PDO::ERRMODE_SILENT); // the caller's choice
        $publisher = new Publisher(Env::deadAmqpUrl(), new Outbox($pdo));

        try {
            $publisher->publish(new Message('t', []), Route::toQueue('q'));
            self::fail('a message neither sent nor stored was taken for persisted');
        } catch (StorageError $exc) {
            self::assertMatchesRegularExpression('/^cannot store the message\(s\) in the outbox: .*outbox_/', $exc->getMessage());
        }
        self::assertSame(\PDO::ERRMODE_SILENT, $pdo->getAttribute(\PDO::ATTR_ERRMODE));
    }

    /** @return array<string, array{string}> */
    public static function backends(): array
    {
        return Databases::BACKENDS;
    }

    private function pendingCount(): string
    {
        return $this->pdo->query('SELECT COUNT(*) FROM outbox_messages WHERE processed = ' . ($this->pdo->getAttribute(\PDO::ATTR_DRIVER_NAME) === 'pgsql' ? 'false' : '0'))->fetchColumn() . ' pending';
    }
}
