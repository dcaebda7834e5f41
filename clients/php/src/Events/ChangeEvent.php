<?php

declare(strict_types=1);

namespace Rabbitry\Events;

use Rabbitry\Exception\MessageError;
use Rabbitry\Message;
use Rabbitry\Route;

/**
 * One change of one entity in Rabbitry's event-sourcing format: a message of type (``rr_job``)
 * ``insert``, ``update`` or ``delete`` with the body ``{"entity", "id", "user", "data"}``,
 * published to ``<namespace>.events`` with the type as routing key, where ``rabbitry worker
 * workflow`` stores it in the event store with the entity's next version. Construction
 * validates what the workflow module would dead-letter, so a bad event fails in PHP, at once.
 */
final class ChangeEvent
{
    public const INSERT = 'insert';
    public const UPDATE = 'update';
    public const DELETE = 'delete';
    public const SYSTEM = 'system';
    private const MAX_ENTITY_LENGTH = 255;

    public readonly int|string $user;

    /**
     * @param string $type insert, update or delete
     * @param string $entity the entity's class with its namespace (``Task::class``), or a table name
     * @param ?array<string, mixed> $data the attributes (for an update, the changed ones); required but for a delete
     * @param int|string|null $user the acting user's id, ``"system"``; null: {@see ActingUser::current()}
     */
    public function __construct(
        public readonly string $type,
        public readonly string $entity,
        public readonly int $id,
        public readonly ?array $data = null,
        int|string|null $user = null,
    ) {
        if (!in_array($type, [self::INSERT, self::UPDATE, self::DELETE], true)) {
            throw new MessageError("change type must be insert, update or delete, got '$type'");
        }
        if (trim($entity) === '') {
            throw new MessageError("'entity' must not be empty");
        }
        if (mb_strlen($entity) > self::MAX_ENTITY_LENGTH) {
            throw new MessageError("'entity' is longer than " . self::MAX_ENTITY_LENGTH . ' characters');
        }
        if ($data === null && $type !== self::DELETE) {
            throw new MessageError("'data' is required for $type");
        }
        if ($data !== null && $data !== [] && array_is_list($data)) {
            throw new MessageError("'data' must be a JSON object (attribute => value), got a list");
        }
        $this->user = self::checkUser($user ?? ActingUser::current());
    }

    /** The message body: a delete without data leaves ``data`` out; ``data`` is always an object. */
    public function payload(): array
    {
        $body = ['entity' => $this->entity, 'id' => $this->id, 'user' => $this->user];
        if ($this->data !== null) {
            $body['data'] = (object) $this->data;
        }

        return $body;
    }

    public function message(): Message
    {
        return new Message(type: $this->type, payload: $this->payload());
    }

    public function route(string $namespace = 'rabbitry'): Route
    {
        return new Route($namespace . '.events', $this->type);
    }

    private static function checkUser(int|string $user): int|string
    {
        if (is_int($user) || $user === self::SYSTEM) {
            return $user;
        }
        // Laravel hands out ids as strings on some drivers: "42" is the user 42.
        if (preg_match('/^-?\d{1,18}$/', $user)) {
            return (int) $user;
        }
        throw new MessageError("'user' must be a user id (integer) or \"system\", got '$user'");
    }
}
