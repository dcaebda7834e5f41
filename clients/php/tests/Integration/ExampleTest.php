<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Integration;

use Rabbitry\Message;
use Rabbitry\Tests\Support\BrokerTestCase;
use Rabbitry\Tests\Support\Env;

/** examples/quickstart.php, shown in the README and docs/php.md, runs as they say. */
final class ExampleTest extends BrokerTestCase
{
    public function testTheQuickstartPublishesAJobAndAChangeEvent(): void
    {
        $emails = $this->queue('emails');
        $events = $this->queue('events', [[$this->ns . '.events', '#']]);
        $command = sprintf(
            'RABBITRY_AMQP_URL=%s RABBITRY_NAMESPACE=%s EMAILS_QUEUE=%s RABBITRY_OUTBOX_DSN= %s %s 2>&1',
            escapeshellarg(Env::amqpUrl()),
            escapeshellarg($this->ns),
            escapeshellarg($emails),
            escapeshellarg(PHP_BINARY),
            escapeshellarg(dirname(__DIR__, 2) . '/examples/quickstart.php'),
        );

        exec($command, $lines, $code);
        [$job] = $this->receive($emails, 1);
        [$event] = $this->receive($events, 1);

        self::assertSame(0, $code, implode("\n", $lines));
        self::assertMatchesRegularExpression('/^job [0-9a-f-]{36}: published$/', $lines[0]);
        self::assertMatchesRegularExpression('/^event [0-9a-f-]{36}: published$/', $lines[1]);
        self::assertSame(['App\Jobs\SendEmail', 'emails'], [Message::fromAmqp($job)->type, Message::fromAmqp($job)->pipeline]);
        self::assertSame(['entity' => 'App\Models\Order', 'id' => 7, 'user' => 42, 'data' => ['total' => 10, 'state' => 'new']], Message::fromAmqp($event)->payload);
    }
}
