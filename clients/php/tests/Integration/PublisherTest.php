<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Integration;

use Rabbitry\AmqpUrl;
use Rabbitry\Exception\PublishFailed;
use Rabbitry\Message;
use Rabbitry\PublishResult;
use Rabbitry\Publisher;
use Rabbitry\Route;
use Rabbitry\Tests\Support\BrokerTestCase;
use Rabbitry\Tests\Support\Env;

/** Publishing against the real broker: confirmed, or an exception; never silence. */
final class PublisherTest extends BrokerTestCase
{
    public function testAConfirmedMessageArrivesWithRoadRunnersFieldTypes(): void
    {
        $queue = $this->queue('jobs');
        $publisher = new Publisher(Env::amqpUrl());
        $message = new Message('App\Jobs\SendEmail', ['to' => 'a@example.com'], headers: ['attempts' => ['0']], pipeline: 'emails', tenant: 'acme');

        $result = $publisher->publish($message, Route::toQueue($queue));
        [$received] = $this->receive($queue, 1);

        self::assertSame([$message->id, PublishResult::PUBLISHED, null], [$result->id, $result->status, $result->error]);
        self::assertSame(
            ['rr_id' => 'S', 'rr_job' => 'S', 'rr_pipeline' => 'S', 'rr_headers' => 'x', 'rr_delay' => 'l', 'rr_priority' => 'l', 'rr_auto_ack' => 't', 'x-tenant' => 'S'],
            Message::fieldTypes($received),
        );
        self::assertSame([2, 'application/json', $message->id], [$received->get('delivery_mode'), $received->get('content_type'), $received->get('message_id')]);
        self::assertSame('{"to":"a@example.com"}', $received->getBody());
    }

    public function testManyArePipelinedAndConfirmedInOrder(): void
    {
        $queue = $this->queue('many');
        $messages = array_map(static fn (int $i): Message => new Message('n', ['i' => $i]), range(1, 50));

        $results = (new Publisher(Env::amqpUrl()))->publishMany(array_map(static fn (Message $m): array => [$m, Route::toQueue($queue)], $messages));
        $received = $this->receive($queue, 50);

        self::assertSame(array_fill(0, 50, PublishResult::PUBLISHED), array_map(static fn (PublishResult $r): string => $r->status, $results));
        self::assertSame(range(1, 50), array_map(static fn ($m): int => Message::fromAmqp($m)->payload['i'], $received));
    }

    public function testAnUnroutableMessageIsAnExceptionNotSilence(): void
    {
        $publisher = new Publisher(Env::amqpUrl());

        try {
            $publisher->publish(new Message('t', []), Route::toQueue($this->ns . '.nobody-listens'));
            self::fail('an unroutable message was taken for published');
        } catch (PublishFailed $exc) {
            self::assertStringContainsString('unroutable: 312 NO_ROUTE', $exc->getMessage());
            self::assertSame(PublishResult::FAILED, $exc->results[0]->status);
        }
        // The publisher goes on after a failure.
        $queue = $this->queue('after');
        self::assertTrue($publisher->publish(new Message('t', []), Route::toQueue($queue))->published());
    }

    public function testANackIsAnException(): void
    {
        // A full queue that rejects new messages: the broker nacks the publish.
        $queue = $this->queue('full', [], ['x-max-length' => 0, 'x-overflow' => 'reject-publish']);

        $this->expectException(PublishFailed::class);
        $this->expectExceptionMessageMatches('/nacked by the broker/');
        (new Publisher(Env::amqpUrl()))->publish(new Message('t', []), Route::toQueue($queue));
    }

    public function testAnUnknownExchangeIsAnException(): void
    {
        $publisher = new Publisher(Env::amqpUrl());

        try {
            $publisher->publish(new Message('t', []), new Route($this->ns . '.no-such-exchange', 'k'));
            self::fail('a publish to a missing exchange was taken for published');
        } catch (PublishFailed $exc) {
            self::assertStringContainsString('NOT_FOUND', $exc->getMessage());
        }
        $queue = $this->queue('after');
        self::assertTrue($publisher->publish(new Message('t', []), Route::toQueue($queue))->published());
    }

    public function testABrokerThatIsDownIsAnException(): void
    {
        $this->expectException(PublishFailed::class);
        $this->expectExceptionMessageMatches('/broker error: cannot connect/');
        (new Publisher(Env::deadAmqpUrl()))->publish(new Message('t', []), Route::toQueue('q'));
    }

    public function testNoConfirmWithinTheTimeoutIsAnException(): void
    {
        $queue = $this->queue('slow');
        $publisher = new Publisher($this->proxy(), timeout: 1.0);
        self::assertTrue($publisher->publish(new Message('t', ['n' => 1]), Route::toQueue($queue))->published());

        touch($this->tmp . '/freeze'); // the broker's confirms no longer reach the publisher
        try {
            $publisher->publish(new Message('t', ['n' => 2]), Route::toQueue($queue));
            self::fail('a publish without a confirm was taken for published');
        } catch (PublishFailed $exc) {
            self::assertStringContainsString('no confirm from the broker within 1s', $exc->getMessage());
        }
    }

    public function testAConnectionThatDiedWhileIdleIsReplacedAndTheMessageSent(): void
    {
        $queue = $this->queue('idle');
        $publisher = new Publisher($this->proxy());
        self::assertTrue($publisher->publish(new Message('t', ['n' => 1]), Route::toQueue($queue))->published());

        $cut = $this->tmp . '/cut';
        touch($cut);
        $this->waitFor(static fn (): bool => !file_exists($cut), 'the proxy cutting the connection');
        $result = $publisher->publish(new Message('t', ['n' => 2]), Route::toQueue($queue));

        self::assertTrue($result->published(), (string) $result->error);
        self::assertSame([1, 2], array_map(static fn ($m): int => Message::fromAmqp($m)->payload['n'], $this->receive($queue, 2)));
    }

    /** The URL of a proxy to the broker that falls silent on tmp/freeze and cuts on tmp/cut. */
    private function proxy(): string
    {
        $url = AmqpUrl::parse(Env::amqpUrl());
        [$host, $port] = $url['hosts'][0];
        $portFile = $this->tmp . '/proxy.port';
        $script = dirname(__DIR__) . '/Support/freezing_proxy.php';
        $proxy = proc_open([PHP_BINARY, $script, $portFile, $this->tmp . '/freeze', $this->tmp . '/cut', "$host:$port"], [], $pipes);
        self::assertIsResource($proxy);
        $this->defer(static function () use ($proxy): void {
            proc_terminate($proxy, 9);
            proc_close($proxy);
        });
        $this->waitFor(static fn (): bool => is_file($portFile) && filesize($portFile) > 0, 'the proxy to listen');

        return sprintf('amqp://%s:%s@127.0.0.1:%s/', rawurlencode($url['user']), rawurlencode($url['password']), file_get_contents($portFile));
    }

    private function waitFor(\Closure $condition, string $what): void
    {
        $deadline = microtime(true) + 30;
        while (!$condition()) {
            self::assertLessThan($deadline, microtime(true), "timed out waiting for $what");
            usleep(20_000);
            clearstatcache();
        }
    }

    public function testABrokerThatNeverAnswersIsAnExceptionAfterTheTimeout(): void
    {
        // A port that accepts connections (the kernel's backlog) and never speaks AMQP.
        $server = stream_socket_server('tcp://127.0.0.1:0');
        self::assertIsResource($server);
        $port = (int) substr((string) stream_socket_get_name($server, false), strlen('127.0.0.1:'));

        try {
            (new Publisher("amqp://guest:guest@127.0.0.1:$port/", timeout: 0.5))->publish(new Message('t', []), Route::toQueue('q'));
            self::fail('a silent broker was taken for a confirm');
        } catch (PublishFailed $exc) {
            self::assertMatchesRegularExpression('/broker error|no confirm/', $exc->getMessage());
        } finally {
            fclose($server);
        }
    }
}
