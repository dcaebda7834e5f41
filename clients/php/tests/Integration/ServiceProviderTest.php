<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Integration;

use Illuminate\Config\Repository;
use Illuminate\Container\Container;
use Rabbitry\Events\ActingUser;
use Rabbitry\Events\ChangeEvents;
use Rabbitry\Laravel\RabbitryServiceProvider;
use Rabbitry\Publisher;
use Rabbitry\Tests\Support\BrokerTestCase;
use Rabbitry\Tests\Support\Databases;
use Rabbitry\Tests\Support\Eloquent;
use Rabbitry\Tests\Support\Env;
use Rabbitry\Tests\Support\Rabbitry;
use Rabbitry\Tests\Support\Task;

/**
 * The Laravel service provider on a container as Laravel builds it: config/rabbitry.php, the
 * outbox on a database connection, the acting user from auth, "system" in the console.
 */
final class ServiceProviderTest extends BrokerTestCase
{
    protected function tearDown(): void
    {
        ActingUser::resolveUsing(null);
        parent::tearDown();
    }

    public function testTheProviderWiresTheOutboxAndTheActingUserFromConfig(): void
    {
        [$pdo, $url, $drop] = Databases::create('sqlite', $this->tmp);
        $this->defer($drop);
        (new Rabbitry($this->ns, $url, $this->tmp))->ok(['db', 'upgrade']);
        $capsule = Eloquent::boot();
        $capsule->addConnection(['driver' => 'sqlite', 'database' => $this->tmp . '/rabbitry.db', 'prefix' => ''], 'rabbitry');
        $app = new class () extends Container {
            public bool $console = false;

            public function runningInConsole(): bool
            {
                return $this->console;
            }
        };
        $app->instance('db', $capsule->getDatabaseManager());
        $app->instance('auth', new class () {
            public function id(): int
            {
                return 5;
            }
        });
        // What an app's own config/rabbitry.php overrides; the package's file gives the rest.
        $app->instance('config', new Repository(['rabbitry' => [
            'amqp_url' => Env::deadAmqpUrl(),
            'namespace' => $this->ns,
            'rabbit_active' => 'false',
            'outbox' => ['connection' => 'rabbitry'],
        ]]));
        $provider = new RabbitryServiceProvider($app);
        $provider->register();
        $provider->boot();

        self::assertSame(5.0, (float) $app->make('config')->get('rabbitry.publish_timeout'));
        self::assertSame($app->make(Publisher::class), $app->make(Publisher::class)); // one connection per process
        self::assertInstanceOf(ChangeEvents::class, $app->make(ChangeEvents::class));
        $task = $capsule->getConnection()->transaction(static fn (): Task => Task::create(['title' => 'by a user']));
        $app->console = true;
        $task->delete();

        $rows = $pdo->query('SELECT exchange, routing_key, origin, processed, last_error, body FROM outbox_messages ORDER BY id')->fetchAll(\PDO::FETCH_ASSOC);
        self::assertSame(
            [["$this->ns.events", 'insert', 5], ["$this->ns.events", 'delete', 'system']],
            array_map(static fn (array $r): array => [$r['exchange'], $r['routing_key'], json_decode($r['body'], true)['user']], $rows),
        );
        self::assertSame(['contingency', 0, 'rabbit_active is false: messages are stored, not sent'], [$rows[0]['origin'], (int) $rows[0]['processed'], $rows[0]['last_error']]);
    }
}
