<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Unit;

use PHPUnit\Framework\TestCase;
use Rabbitry\AmqpUrl;
use Rabbitry\Events\ActingUser;
use Rabbitry\Events\ChangeEvent;
use Rabbitry\Exception\MessageError;

/** Change events as the workflow module reads them, refused in PHP when it would refuse them. */
final class ChangeEventTest extends TestCase
{
    protected function tearDown(): void
    {
        ActingUser::resolveUsing(null);
    }

    public function testAnEventIsTheWorkflowModulesFormatOnItsExchange(): void
    {
        $event = new ChangeEvent(ChangeEvent::UPDATE, 'App\Models\Task', 7, ['title' => 'x'], 42);
        $message = $event->message();
        $route = $event->route('acme');

        self::assertSame(['update', '{"entity":"App\\\\Models\\\\Task","id":7,"user":42,"data":{"title":"x"}}'], [$message->type, $message->body()]);
        self::assertSame(['acme.events', 'update'], [$route->exchange, $route->routingKey]);
    }

    public function testEmptyDataIsAnObjectAndADeleteMayHaveNone(): void
    {
        self::assertSame('{"entity":"t","id":1,"user":"system","data":{}}', (new ChangeEvent('insert', 't', 1, []))->message()->body());
        self::assertSame('{"entity":"t","id":1,"user":"system"}', (new ChangeEvent('delete', 't', 1))->message()->body());
    }

    public function testTheUserIsTheActingOneWhenNotGiven(): void
    {
        ActingUser::resolveUsing(static fn (): ?int => 5);

        self::assertSame(5, (new ChangeEvent('delete', 't', 1))->user);
        self::assertSame(9, ActingUser::as(9, static fn () => (new ChangeEvent('delete', 't', 1))->user));
        self::assertSame(12, (new ChangeEvent('delete', 't', 1, null, '12'))->user);
        ActingUser::resolveUsing(static fn (): ?int => null);
        self::assertSame('system', (new ChangeEvent('delete', 't', 1))->user);
    }

    /** @return iterable<string, array{string, string, ?array<mixed>, int|string|null, string}> */
    public static function refused(): iterable
    {
        yield 'another type' => ['upsert', 't', [], 1, "change type must be insert, update or delete, got 'upsert'"];
        yield 'no entity' => ['insert', ' ', [], 1, "'entity' must not be empty"];
        yield 'a long entity' => ['insert', str_repeat('e', 256), [], 1, "'entity' is longer than 255 characters"];
        yield 'no data on update' => ['update', 't', null, 1, "'data' is required for update"];
        yield 'data as a list' => ['insert', 't', [1, 2], 1, "'data' must be a JSON object (attribute => value), got a list"];
        yield 'a user name' => ['insert', 't', [], 'bob', "'user' must be a user id (integer) or \"system\", got 'bob'"];
    }

    /**
     * @dataProvider refused
     *
     * @param ?array<mixed> $data
     */
    public function testWhatTheWorkflowModuleWouldDeadLetterIsRefused(string $type, string $entity, ?array $data, int|string|null $user, string $reason): void
    {
        $this->expectExceptionObject(new MessageError($reason));
        new ChangeEvent($type, $entity, 1, $data, $user);
    }

    public function testAmqpUrlsAreReadAsRabbitryReadsThem(): void
    {
        self::assertSame(
            ['hosts' => [['h1', 5672], ['h2', 5673]], 'user' => 'u@x', 'password' => 'p/w', 'vhost' => '/', 'secure' => false],
            AmqpUrl::parse('amqp://u%40x:p%2Fw@h1,h2:5673/'),
        );
        self::assertSame(
            ['hosts' => [['::1', 5671]], 'user' => 'guest', 'password' => 'guest', 'vhost' => 'prod', 'secure' => true],
            AmqpUrl::parse('amqps://[::1]/prod'),
        );
        $this->expectException(\InvalidArgumentException::class);
        AmqpUrl::parse('http://example.com/');
    }
}
