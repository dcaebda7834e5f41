<?php

declare(strict_types=1);

namespace Rabbitry;

use Rabbitry\Exception\StorageError;

/**
 * Rabbitry's outbox, written through PDO: a message the broker cannot take is stored as a
 * pending row of Rabbitry's ``outbox_messages`` table (SQLite or PostgreSQL, migrated by
 * ``rabbitry db upgrade``), exactly as the Python side writes it, so that ``rabbitry requeue``,
 * the relay (``rabbitry worker relay``, ``rabbitry up``) and the back-office handle PHP's
 * messages too.
 *
 * The table is a contract between the two sides (pinned by a test on each side):
 *
 * | column | written as |
 * |---|---|
 * | queue | the registry name, or ``<exchange>/<routing key>`` |
 * | exchange, routing_key, message_id | text |
 * | body | the body, UTF-8 JSON text, byte for byte |
 * | headers | JSON of the header table; bytes as ``{"$bytes": text}``, times as ``{"$datetime": iso}`` |
 * | created_at | naive UTC, ``YYYY-MM-DD HH:MM:SS.ffffff`` (SQLAlchemy's SQLite form) |
 * | processed / attempts / origin | false / 0 / ``contingency`` |
 * | last_error | why the broker did not take it |
 */
final class Outbox
{
    public const ORIGIN = 'contingency';

    private const COLUMNS = ['queue', 'exchange', 'routing_key', 'body', 'headers', 'message_id', 'created_at', 'processed', 'attempts', 'last_error', 'origin'];

    public function __construct(private readonly \PDO $pdo)
    {
    }

    /**
     * Store (message, route, reason) items as pending rows, in one transaction (or in the
     * caller's, if one is open); returns their row ids, in order.
     *
     * @param list<array{Message, Route, string}> $items
     *
     * @return list<int>
     *
     * @throws StorageError when they cannot be stored (then none is)
     */
    public function store(array $items): array
    {
        if ($items === []) {
            return [];
        }
        $now = (new \DateTimeImmutable('now', new \DateTimeZone('UTC')))->format('Y-m-d H:i:s.u');
        $ownTransaction = false;
        // Whatever error mode the caller set, a failure here must be an exception.
        $errorMode = $this->pdo->getAttribute(\PDO::ATTR_ERRMODE);
        $this->pdo->setAttribute(\PDO::ATTR_ERRMODE, \PDO::ERRMODE_EXCEPTION);
        try {
            $rows = [];
            foreach ($items as [$message, $route, $reason]) {
                $rows[] = $this->row($message, $route, $reason, $now);
            }
            if (!$this->pdo->inTransaction()) {
                $this->pdo->beginTransaction();
                $ownTransaction = true;
            }
            $this->fileAdHoc($rows);
            $false = $this->pdo->getAttribute(\PDO::ATTR_DRIVER_NAME) === 'pgsql' ? 'false' : '0';
            $placeholders = implode(', ', array_map(static fn (string $c): string => $c === 'processed' ? $false : ':' . $c, self::COLUMNS));
            $statement = $this->pdo->prepare(
                'INSERT INTO outbox_messages (' . implode(', ', self::COLUMNS) . ") VALUES ($placeholders) RETURNING id"
            );
            $ids = [];
            foreach ($rows as $row) {
                unset($row['processed']);
                $statement->execute($row);
                $ids[] = (int) $statement->fetchColumn();
                $statement->closeCursor();
            }
            if ($ownTransaction) {
                $this->pdo->commit();
            }

            return $ids;
        } catch (\PDOException|\JsonException|\ValueError $exc) {
            if ($ownTransaction && $this->pdo->inTransaction()) {
                $this->pdo->rollBack();
            }
            throw new StorageError('cannot store the message(s) in the outbox: ' . $exc->getMessage(), 0, $exc);
        } finally {
            $this->pdo->setAttribute(\PDO::ATTR_ERRMODE, $errorMode);
        }
    }

    /** @return array<string, mixed> */
    private function row(Message $message, Route $route, string $reason, string $now): array
    {
        $body = $message->body();
        if (!mb_check_encoding($body, 'UTF-8')) {
            throw new \ValueError('the body is not UTF-8');
        }

        return [
            'queue' => $route->queue ?? '',
            'exchange' => $route->exchange,
            'routing_key' => $route->routingKey,
            'body' => $body,
            'headers' => json_encode(self::headersToJson($message), JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION | JSON_THROW_ON_ERROR),
            'message_id' => $message->id,
            'created_at' => $now,
            'processed' => false,
            'attempts' => 0,
            'last_error' => $reason === '' ? null : $reason,
            'origin' => self::ORIGIN,
        ];
    }

    /**
     * The header table as the ledger stores it (Rabbitry's ``outbox.codec``): JSON values as
     * they are, bytes tagged ``$bytes`` (``rr_headers`` stays readable in the back-office).
     *
     * @return array<string, mixed>
     */
    public static function headersToJson(Message $message): array
    {
        $headers = [
            'rr_id' => $message->id,
            'rr_job' => $message->type,
            'rr_pipeline' => $message->pipeline,
            'rr_headers' => ['$bytes' => $message->encodedHeaders()],
            'rr_delay' => $message->delay,
            'rr_priority' => $message->priority,
            'rr_auto_ack' => $message->autoAck,
        ];
        foreach ([Message::TENANT_HEADER => $message->tenant, Message::CORRELATION_HEADER => $message->correlationId, Message::TRACEPARENT_HEADER => $message->traceparent] as $name => $value) {
            if ($value !== null) {
                $headers[$name] = $value;
            }
        }
        if ($message->attempt !== 0) {
            $headers[Message::ATTEMPT_HEADER] = $message->attempt;
        }
        foreach ($message->extra as $name => $value) {
            $headers[(string) $name] ??= self::valueToJson($value);
        }

        return $headers;
    }

    private static function valueToJson(mixed $value): mixed
    {
        if (is_string($value)) {
            return mb_check_encoding($value, 'UTF-8') ? $value : ['$base64' => base64_encode($value)];
        }
        if ($value instanceof \DateTimeInterface) {
            return ['$datetime' => \DateTimeImmutable::createFromInterface($value)->setTimezone(new \DateTimeZone('UTC'))->format('Y-m-d\TH:i:sP')];
        }
        if (is_array($value)) {
            if (array_is_list($value)) {
                return array_map(self::valueToJson(...), $value);
            }
            $table = array_map(self::valueToJson(...), $value);
            // A table whose only key looks like a tag is wrapped so it is never read as one.
            return count($table) === 1 && str_starts_with((string) array_key_first($table), '$') ? ['$table' => $table] : (object) $table;
        }

        return $value; // int, float, bool, null
    }

    /**
     * Rows without a registry name go under the one active registry entry that publishes to
     * their exchange and routing key, if exactly one does, else ``<exchange>/<routing key>``
     * (the Python ledger's rule, so ``rabbitry requeue NAME`` finds them).
     *
     * @param list<array<string, mixed>> $rows
     */
    private function fileAdHoc(array &$rows): void
    {
        $lookup = null;
        foreach ($rows as &$row) {
            if ($row['queue'] !== '') {
                continue;
            }
            $lookup ??= $this->pdo->prepare('SELECT name FROM outbox_queues WHERE active = ' . ($this->pdo->getAttribute(\PDO::ATTR_DRIVER_NAME) === 'pgsql' ? 'true' : '1') . ' AND exchange = ? AND routing_key = ?');
            $lookup->execute([$row['exchange'], $row['routing_key']]);
            $names = $lookup->fetchAll(\PDO::FETCH_COLUMN);
            $row['queue'] = count($names) === 1 ? (string) $names[0] : $row['exchange'] . '/' . $row['routing_key'];
        }
    }
}
