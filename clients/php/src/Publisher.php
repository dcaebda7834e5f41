<?php

declare(strict_types=1);

namespace Rabbitry;

use PhpAmqpLib\Channel\AMQPChannel;
use PhpAmqpLib\Connection\AbstractConnection;
use PhpAmqpLib\Connection\AMQPConnectionConfig;
use PhpAmqpLib\Connection\AMQPConnectionFactory;
use PhpAmqpLib\Exception\AMQPConnectionClosedException;
use PhpAmqpLib\Exception\AMQPExceptionInterface;
use PhpAmqpLib\Exception\AMQPHeartbeatMissedException;
use PhpAmqpLib\Exception\AMQPIOException;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;
use Rabbitry\Exception\MessageError;
use Rabbitry\Exception\PublishFailed;

/**
 * Publishes messages with publisher confirms and ``mandatory``: a message counts as published
 * only once the broker confirmed it. A nack, a return (no queue is bound for it) or no confirm
 * within ``timeout`` seconds is a failure, and so is a broker that cannot be reached. A
 * failed message goes to the outbox when there is one (the result says ``persisted``), else
 * the call throws {@see PublishFailed}: never silence. With ``rabbitActive`` false the broker
 * is not even tried (Rabbitry's ``rabbit_active`` switch): everything goes to the outbox.
 *
 * One connection and one confirm-mode channel, opened on the first publish and opened again
 * after a failure. Not for sharing between processes (fork after connecting is not safe).
 */
final class Publisher
{
    private ?AbstractConnection $connection = null;
    private ?AMQPChannel $channel = null;

    /**
     * @param string $amqpUrl ``amqp://user:password@host:port/vhost`` (``amqps://`` for TLS; hosts
     *                        separated by commas are tried in turn)
     * @param ?Outbox $outbox where messages the broker does not take are stored
     * @param float $timeout seconds to wait for the broker's confirm (and to connect)
     */
    public function __construct(
        private readonly string $amqpUrl,
        private readonly ?Outbox $outbox = null,
        private readonly bool $rabbitActive = true,
        private readonly float $timeout = 5.0,
    ) {
        if ($timeout <= 0) {
            throw new \InvalidArgumentException('timeout must be positive');
        }
    }

    /**
     * Publish one message.
     *
     * @throws PublishFailed when the broker did not confirm it and there is no outbox
     * @throws Exception\StorageError when the outbox could not store it
     * @throws MessageError when it cannot be encoded (its payload is not JSON)
     */
    public function publish(Message $message, Route $route): PublishResult
    {
        return $this->publishMany([[$message, $route]])[0];
    }

    /**
     * Publish several messages, pipelined: all are sent, then the confirms awaited together.
     * The failed ones (and only they) go to the outbox in one transaction.
     *
     * @param list<array{Message, Route}> $items
     *
     * @return list<PublishResult> one per item, in order
     *
     * @throws PublishFailed when any was not confirmed and there is no outbox ($results has all)
     */
    public function publishMany(array $items): array
    {
        foreach ($items as [$message]) {
            $message->body(); // a payload that is not JSON fails the call before anything is sent
        }
        $failures = $this->rabbitActive ? $this->send($items) : array_fill_keys(array_keys($items), 'rabbit_active is false: messages are stored, not sent');
        $results = [];
        $toStore = [];
        foreach ($items as $index => [$message, $route]) {
            $reason = $failures[$index] ?? null;
            if ($reason === null) {
                $results[] = new PublishResult($message->id, PublishResult::PUBLISHED);
            } elseif ($this->outbox !== null) {
                $results[] = new PublishResult($message->id, PublishResult::PERSISTED, $reason);
                $toStore[] = [$message, $route, $reason];
            } else {
                $results[] = new PublishResult($message->id, PublishResult::FAILED, $reason);
            }
        }
        if ($toStore !== []) {
            $this->outbox?->store($toStore);
        }
        $failed = array_filter($results, static fn (PublishResult $r): bool => $r->status === PublishResult::FAILED);
        if ($failed !== []) {
            $first = reset($failed);
            throw new PublishFailed(sprintf('%d of %d message(s) not published: %s', count($failed), count($results), $first->error), $results);
        }

        return $results;
    }

    /** Close the connection (a later publish opens a new one). */
    public function close(): void
    {
        $connection = $this->connection;
        $this->connection = null;
        $this->channel = null;
        if ($connection !== null) {
            try {
                $connection->close();
            } catch (\Throwable) {
                // Closing a broken connection fails; it is gone either way.
            }
        }
    }

    public function __destruct()
    {
        $this->close();
    }

    /**
     * Send and await the confirms; the failure reason of each item that failed.
     *
     * A connection kept from an earlier call may have died while idle (the broker restarted, a
     * load balancer dropped it) without PHP noticing: when that connection fails, the messages
     * it did not settle are sent once more on a new one. Their ids are unchanged, so a
     * message the broker took twice is recognised downstream (the event store keeps it once).
     *
     * @param list<array{Message, Route}> $items
     *
     * @return array<int, string>
     */
    private function send(array $items): array
    {
        $reused = $this->channel !== null && $this->channel->is_open();
        [$failures, $lost] = $this->attempt($items);
        if (!$reused || $lost === []) {
            return $failures;
        }
        [$again] = $this->attempt(array_values(array_intersect_key($items, array_flip($lost))));
        foreach ($lost as $position => $index) {
            unset($failures[$index]);
            if (isset($again[$position])) {
                $failures[$index] = $again[$position];
            }
        }

        return $failures;
    }

    /**
     * One try: the failure reason of each item that failed, and the items that were left
     * unsettled because the connection itself failed.
     *
     * @param list<array{Message, Route}> $items
     *
     * @return array{array<int, string>, list<int>}
     */
    private function attempt(array $items): array
    {
        $state = new \stdClass();
        $state->outcome = []; // index => null (confirmed) or reason
        $state->returned = []; // message id => reason
        $byObject = [];
        try {
            $channel = $this->channel();
            $channel->set_ack_handler(static function (AMQPMessage $amqp) use ($state, &$byObject): void {
                $index = $byObject[spl_object_id($amqp)] ?? null;
                if ($index !== null) {
                    $state->outcome[$index] = $state->returned[(string) $amqp->get('message_id')] ?? null;
                }
            });
            $channel->set_nack_handler(static function (AMQPMessage $amqp) use ($state, &$byObject): void {
                $index = $byObject[spl_object_id($amqp)] ?? null;
                if ($index !== null) {
                    $state->outcome[$index] = 'nacked by the broker';
                }
            });
            // The broker returns an unroutable mandatory message before it acks it.
            $channel->set_return_listener(static function (int $code, string $text, string $exchange, string $key, AMQPMessage $amqp) use ($state): void {
                $state->returned[(string) $amqp->get('message_id')] = sprintf('unroutable: %d %s (exchange %s, routing key %s)', $code, $text, $exchange === '' ? "''" : $exchange, $key);
            });
            $amqpMessages = [];
            foreach ($items as $index => [$message, $route]) {
                $amqp = $message->toAmqp();
                $amqpMessages[] = $amqp; // keeps every object alive, so no object id is reused
                $byObject[spl_object_id($amqp)] = $index;
                $channel->basic_publish($amqp, $route->exchange, $route->routingKey, true);
            }
            $channel->wait_for_pending_acks_returns($this->timeout);
        } catch (AMQPTimeoutException) {
            $this->close();

            return [$this->unsettled($items, $state->outcome, sprintf('no confirm from the broker within %gs', $this->timeout)), []];
        } catch (AMQPConnectionClosedException|AMQPIOException|AMQPHeartbeatMissedException $exc) {
            $this->close();
            $lost = array_values(array_diff(array_keys($items), array_keys($state->outcome)));

            return [$this->unsettled($items, $state->outcome, 'broker error: ' . self::describe($exc)), $lost];
        } catch (AMQPExceptionInterface|\ErrorException|\RuntimeException $exc) {
            // Refused, or the broker closed the channel (an unknown exchange).
            $this->close();

            return [$this->unsettled($items, $state->outcome, 'broker error: ' . self::describe($exc)), []];
        }

        return [$this->unsettled($items, $state->outcome, 'no confirm from the broker'), []];
    }

    /**
     * @param list<array{Message, Route}> $items
     * @param array<int, ?string> $outcome
     *
     * @return array<int, string>
     */
    private function unsettled(array $items, array $outcome, string $reason): array
    {
        $failures = [];
        foreach (array_keys($items) as $index) {
            if (!array_key_exists($index, $outcome)) {
                $failures[$index] = $reason;
            } elseif ($outcome[$index] !== null) {
                $failures[$index] = $outcome[$index];
            }
        }

        return $failures;
    }

    private function channel(): AMQPChannel
    {
        if ($this->channel !== null && $this->channel->is_open()) {
            return $this->channel;
        }
        $this->close();
        $config = AmqpUrl::parse($this->amqpUrl);
        $last = null;
        foreach ($config['hosts'] as [$host, $port]) {
            $settings = new AMQPConnectionConfig();
            $settings->setHost($host);
            $settings->setPort($port);
            $settings->setUser($config['user']);
            $settings->setPassword($config['password']);
            $settings->setVhost($config['vhost']);
            $settings->setIsSecure($config['secure']);
            $settings->setConnectionTimeout($this->timeout);
            $settings->setReadTimeout($this->timeout);
            $settings->setWriteTimeout($this->timeout);
            // Channel RPCs (confirm.select, channel.close) wait forever by default.
            $settings->setChannelRPCTimeout($this->timeout);
            $settings->setConnectionName('rabbitry-php');
            try {
                $this->connection = AMQPConnectionFactory::create($settings);
                break;
            } catch (\Throwable $exc) {
                $last = $exc;
            }
        }
        if ($this->connection === null) {
            throw new AMQPIOException('cannot connect: ' . ($last !== null ? self::describe($last) : 'no host'), 0, $last);
        }
        $this->channel = $this->connection->channel();
        $this->channel->confirm_select();

        return $this->channel;
    }

    private static function describe(\Throwable $exc): string
    {
        $text = trim($exc->getMessage());

        return $text === '' ? get_class($exc) : $text;
    }
}
