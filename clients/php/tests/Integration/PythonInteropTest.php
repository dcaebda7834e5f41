<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Integration;

use Rabbitry\Message;
use Rabbitry\Tests\Support\BrokerTestCase;
use Rabbitry\Tests\Support\Rabbitry;

/** Rabbitry's Python side publishes; PHP reads exactly what was sent, value and type. */
final class PythonInteropTest extends BrokerTestCase
{
    public function testPhpReadsWhatRabbitryPublishesWithExactValuesAndTypes(): void
    {
        $queue = $this->queue('from-python');
        $body = '{"int": 7, "float": 1.5, "whole": 2.0, "yes": true, "none": null, "text": "envío ✓ \\/ \\"q\\"", "nested": {"list": [1, "a", []], "empty": {}}, "big": 9007199254740993}';
        $before = time();

        $printed = (new Rabbitry($this->ns, null, $this->tmp))->ok([
            'publish', '-e', '', '-k', $queue, '-t', 'App\Jobs\SendEmail',
            '--tenant', 'acme', '--pipeline', 'emails', '-H', 'attempts=1', '-H', 'path=a/b', $body,
        ]);
        $outcome = json_decode($printed, true, 512, JSON_THROW_ON_ERROR);
        [$amqp] = $this->receive($queue, 1);
        $message = Message::fromAmqp($amqp);

        self::assertSame('published', $outcome['status']);
        self::assertSame(
            ['rr_id' => 'S', 'rr_job' => 'S', 'rr_pipeline' => 'S', 'rr_headers' => 'x', 'rr_delay' => 'l', 'rr_priority' => 'l', 'rr_auto_ack' => 't', 'x-tenant' => 'S'],
            Message::fieldTypes($amqp),
        );
        self::assertSame($outcome['id'], $message->id);
        self::assertSame($outcome['id'], $amqp->get('message_id'));
        self::assertSame(['application/json', 2], [$amqp->get('content_type'), $amqp->get('delivery_mode')]);
        self::assertSame(
            ['App\Jobs\SendEmail', 'emails', ['attempts' => ['1'], 'path' => ['a/b']], 0, 10, false, 'acme', 0, []],
            [$message->type, $message->pipeline, $message->headers, $message->delay, $message->priority, $message->autoAck, $message->tenant, $message->attempt, $message->extra],
        );
        self::assertSame($body, $message->rawBody); // byte for byte
        self::assertSame(
            ['int' => 7, 'float' => 1.5, 'whole' => 2.0, 'yes' => true, 'none' => null, 'text' => 'envío ✓ / "q"', 'nested' => ['list' => [1, 'a', []], 'empty' => []], 'big' => 9007199254740993],
            $message->payload,
        );
        self::assertIsFloat($message->payload['whole']);
        self::assertGreaterThanOrEqual($before, $message->timestamp);
        self::assertLessThanOrEqual(time(), $message->timestamp);
    }
}
