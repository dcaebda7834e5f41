<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Support;

use PhpAmqpLib\Channel\AMQPChannel;
use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;
use PHPUnit\Framework\TestCase;
use Rabbitry\AmqpUrl;

/**
 * A test against the real broker: a namespace of its own (every object it names starts with
 * it), a connection of its own, a scratch directory; all removed afterwards, even on failure.
 */
abstract class BrokerTestCase extends TestCase
{
    protected string $ns;
    protected string $tmp;
    protected AMQPChannel $channel;
    private AMQPStreamConnection $connection;
    /** @var list<\Closure(): void> */
    private array $cleanups = [];
    /** @var list<string> */
    private array $queues = [];
    /** @var list<string> */
    private array $exchanges = [];

    protected function setUp(): void
    {
        $this->ns = Env::newNamespace();
        $this->tmp = sys_get_temp_dir() . '/' . $this->ns;
        mkdir($this->tmp);
        $url = AmqpUrl::parse(Env::amqpUrl());
        [$host, $port] = $url['hosts'][0];
        $this->connection = new AMQPStreamConnection($host, $port, $url['user'], $url['password'], $url['vhost']);
        $this->channel = $this->connection->channel();
    }

    protected function tearDown(): void
    {
        try {
            foreach (array_reverse($this->cleanups) as $cleanup) {
                $cleanup();
            }
            if ($this->channel->is_open()) {
                foreach ($this->queues as $queue) {
                    $this->channel->queue_delete($queue);
                }
                foreach ($this->exchanges as $exchange) {
                    $this->channel->exchange_delete($exchange);
                }
            }
            if (!Env::cleanedOutside()) {
                $this->deleteNamespace();
            }
        } finally {
            $this->connection->close();
            exec('rm -rf ' . escapeshellarg($this->tmp));
        }
    }

    /** Run ``$cleanup`` after the test, whatever its outcome. */
    protected function defer(\Closure $cleanup): void
    {
        $this->cleanups[] = $cleanup;
    }

    /**
     * Declare a durable queue ``<ns>.<name>``, bound to each topic exchange and key given.
     *
     * @param list<array{string, string}> $bindings
     * @param array<string, mixed> $arguments
     */
    protected function queue(string $name, array $bindings = [], array $arguments = []): string
    {
        $queue = $this->ns . '.' . $name;
        $this->channel->queue_declare($queue, false, true, false, false, false, new AMQPTable($arguments));
        $this->queues[] = $queue;
        foreach ($bindings as [$exchange, $key]) {
            $this->channel->exchange_declare($exchange, 'topic', false, true, false);
            $this->exchanges[] = $exchange;
            $this->channel->queue_bind($queue, $exchange, $key);
        }

        return $queue;
    }

    /**
     * Wait for ``$count`` messages on ``$queue`` (acked as they come), at most ``$timeout`` s.
     *
     * @return list<AMQPMessage>
     */
    protected function receive(string $queue, int $count, float $timeout = 30.0): array
    {
        $received = [];
        $tag = $this->channel->basic_consume($queue, '', false, false, false, false, static function (AMQPMessage $m) use (&$received): void {
            $received[] = $m;
            $m->ack();
        });
        $deadline = microtime(true) + $timeout;
        try {
            while (count($received) < $count) {
                $left = $deadline - microtime(true);
                if ($left <= 0) {
                    $this->fail(sprintf('%d of %d message(s) arrived on %s within %gs', count($received), $count, $queue, $timeout));
                }
                try {
                    $this->channel->wait(null, false, $left);
                } catch (AMQPTimeoutException) {
                    // the deadline check above reports it
                }
            }
        } finally {
            $this->channel->basic_cancel($tag);
        }

        return $received;
    }

    /** How many messages wait on ``$queue`` now. */
    protected function depth(string $queue): int
    {
        [, $messages] = $this->channel->queue_declare($queue, true);

        return (int) $messages;
    }

    private function deleteNamespace(): void
    {
        // Run alone (not under Rabbitry's test command): remove what `rabbitry` declared too.
        foreach (['queues', 'exchanges'] as $kind) {
            exec('rabbitmqctl -q list_' . $kind . ' name --no-table-headers 2>/dev/null', $names);
            foreach ($names as $name) {
                if (str_starts_with($name, $this->ns)) {
                    $kind === 'queues' ? $this->channel->queue_delete($name) : $this->channel->exchange_delete($name);
                }
            }
            $names = [];
        }
    }
}
