<?php

declare(strict_types=1);

namespace Rabbitry;

use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPTable;
use Rabbitry\Exception\MessageError;

/**
 * One message in Rabbitry's format, which is RoadRunner's AMQP job format: a type (RoadRunner's
 * job name, ``rr_job``), a JSON payload, and the metadata RoadRunner and Rabbitry read.
 *
 * {@see toAmqp()} writes the seven ``rr_*`` headers with the exact AMQP field types RoadRunner
 * reads by tag (``rr_headers`` a byte array ``x``, ``rr_delay``/``rr_priority`` signed 64-bit
 * ``l``, ``rr_auto_ack`` a boolean ``t``); php-amqplib would pick ``I`` for small integers and
 * ``S`` for strings, which some RoadRunner releases ignore or crash on. {@see fromAmqp()} is
 * lenient the way RoadRunner's consumer and Rabbitry's Python envelope are.
 */
final class Message
{
    public const CONTENT_TYPE = 'application/json';
    public const PERSISTENT = 2;
    public const DEFAULT_PRIORITY = 10;
    /** The type RoadRunner (and a lenient reader) gives a message without ``rr_job``. */
    public const UNKNOWN_JOB = 'deduced_by_rr';

    public const TENANT_HEADER = 'x-tenant';
    public const CORRELATION_HEADER = 'x-correlation-id';
    public const TRACEPARENT_HEADER = 'traceparent';
    public const ATTEMPT_HEADER = 'x-rabbitry-attempt';

    private const RR_HEADERS = ['rr_id', 'rr_job', 'rr_pipeline', 'rr_headers', 'rr_delay', 'rr_priority', 'rr_auto_ack'];
    private const KNOWN = [...self::RR_HEADERS, self::TENANT_HEADER, self::CORRELATION_HEADER, self::TRACEPARENT_HEADER, self::ATTEMPT_HEADER];
    // Compact, unescaped UTF-8 JSON: what Python's json.dumps(ensure_ascii=False) and PHP's
    // json_decode both read back as written; 1.0 stays a float on the other side.
    private const JSON_FLAGS = JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION | JSON_THROW_ON_ERROR;

    public readonly string $id;
    /** @var array<string, list<string>> */
    public readonly array $headers;
    /** Unix seconds, UTC: the AMQP ``timestamp`` property. */
    public readonly int $timestamp;

    /**
     * @param mixed $payload anything json_encode takes (a JSON object: an associative array or an object)
     * @param array<string, string|list<string>> $headers application headers (``rr_headers``): PHP's getHeaders() behind RoadRunner
     * @param array<string, mixed> $extra any other AMQP header (broker headers such as x-death when read)
     * @param ?string $rawBody the body exactly as received; re-publishing sends these bytes
     */
    public function __construct(
        public readonly string $type,
        public readonly mixed $payload,
        ?string $id = null,
        array $headers = [],
        public readonly string $pipeline = '',
        public readonly int $delay = 0,
        public readonly int $priority = self::DEFAULT_PRIORITY,
        public readonly bool $autoAck = false,
        public readonly ?string $tenant = null,
        public readonly ?string $correlationId = null,
        public readonly ?string $traceparent = null,
        ?int $timestamp = null,
        public readonly int $attempt = 0,
        public readonly array $extra = [],
        public readonly ?string $rawBody = null,
        public readonly string $exchange = '',
        public readonly string $routingKey = '',
        public readonly bool $redelivered = false,
    ) {
        $this->id = $id ?? self::newId();
        $this->headers = self::normaliseHeaders($headers);
        $this->timestamp = $timestamp ?? time();
    }

    /**
     * A version 7 UUID as text (RFC 9562), the id every new message gets: the Unix time in
     * milliseconds, then 74 random bits, as Rabbitry's Python side makes them. Time first, so
     * that the ids of one service sort together and the event store's unique index on message
     * ids takes each at its end instead of at a random page (0.80x of PostgreSQL's CPU per
     * stored event, docs/performance.md).
     */
    public static function newId(): string
    {
        $milliseconds = (int) floor(microtime(true) * 1000);
        $bytes = substr(pack('J', $milliseconds), 2) . random_bytes(10);
        $bytes[6] = chr(ord($bytes[6]) & 0x0F | 0x70);
        $bytes[8] = chr(ord($bytes[8]) & 0x3F | 0x80);
        $hex = bin2hex($bytes);

        return sprintf('%s-%s-%s-%s-%s', substr($hex, 0, 8), substr($hex, 8, 4), substr($hex, 12, 4), substr($hex, 16, 4), substr($hex, 20));
    }

    /**
     * The id of a message that carries neither ``rr_id`` nor ``message_id``: derived from its
     * type, timestamp and body, as Rabbitry's Python side derives it, so every redelivery (and
     * both sides) get the same id.
     */
    public static function contentId(string $type, ?int $timestamp, string $body): string
    {
        $stamp = $timestamp === null ? '' : gmdate('Y-m-d\TH:i:s', $timestamp) . '+00:00';

        return 'sha256:' . substr(hash('sha256', $type . "\0" . $stamp . "\0" . $body), 0, 32);
    }

    /** The body bytes: the original ones when known, else compact UTF-8 JSON of the payload. */
    public function body(): string
    {
        if ($this->rawBody !== null) {
            return $this->rawBody;
        }
        try {
            return json_encode($this->payload, self::JSON_FLAGS);
        } catch (\JsonException $exc) {
            throw new MessageError('payload is not JSON-serialisable: ' . $exc->getMessage(), 0, $exc);
        }
    }

    /**
     * The header table as Rabbitry writes it: the seven ``rr_*`` headers first with their
     * exact field types, then tenant, correlation id, traceparent and attempt when set, then
     * ``extra`` (which never replaces any of those).
     */
    public function headerTable(): AMQPTable
    {
        $table = new AMQPTable();
        $table->set('rr_id', $this->id, AMQPTable::T_STRING_LONG);
        $table->set('rr_job', $this->type, AMQPTable::T_STRING_LONG);
        $table->set('rr_pipeline', $this->pipeline, AMQPTable::T_STRING_LONG);
        $table->set('rr_headers', $this->encodedHeaders(), AMQPTable::T_BYTES);
        $table->set('rr_delay', $this->delay, AMQPTable::T_INT_LONGLONG);
        $table->set('rr_priority', $this->priority, AMQPTable::T_INT_LONGLONG);
        $table->set('rr_auto_ack', $this->autoAck, AMQPTable::T_BOOL);
        foreach ([self::TENANT_HEADER => $this->tenant, self::CORRELATION_HEADER => $this->correlationId, self::TRACEPARENT_HEADER => $this->traceparent] as $name => $value) {
            if ($value !== null) {
                $table->set($name, $value, AMQPTable::T_STRING_LONG);
            }
        }
        if ($this->attempt !== 0) {
            $table->set(self::ATTEMPT_HEADER, $this->attempt, AMQPTable::T_INT_LONGLONG);
        }
        foreach ($this->extra as $name => $value) {
            if (!isset($table[$name]) && !in_array($name, self::KNOWN, true)) {
                // Integers go out as signed 64-bit, the one width every reader takes.
                is_int($value) ? $table->set((string) $name, $value, AMQPTable::T_INT_LONGLONG) : $table->set((string) $name, $value);
            }
        }

        return $table;
    }

    /** ``rr_headers``: compact JSON of the application headers, ``{}`` when there are none. */
    public function encodedHeaders(): string
    {
        // Python's json.dumps default (\uXXXX escapes, no escaped slashes): the bytes match.
        return $this->headers === [] ? '{}' : json_encode($this->headers, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
    }

    /** The message as php-amqplib publishes it: persistent, JSON, ``message_id`` = ``rr_id``. */
    public function toAmqp(): AMQPMessage
    {
        $properties = [
            'content_type' => self::CONTENT_TYPE,
            'delivery_mode' => self::PERSISTENT,
            'message_id' => $this->id,
            'timestamp' => $this->timestamp,
            'application_headers' => $this->headerTable(),
        ];
        if ($this->correlationId !== null) {
            $properties['correlation_id'] = $this->correlationId;
        }

        return new AMQPMessage($this->body(), $properties);
    }

    /**
     * Read a delivered message (for PHP consumers not behind RoadRunner).
     *
     * Lenient as RoadRunner's consumer and Rabbitry's Python reader are: any header order,
     * any integer width for ``rr_delay``/``rr_priority``, ``rr_headers`` as bytes or string
     * (null, broken JSON or not an object: no headers), no ``rr_auto_ack`` (false), unknown
     * headers kept in ``extra``. Without ``rr_id`` the ``message_id`` property is the id, else
     * {@see contentId()}.
     *
     * @param bool $strict whether a message without ``rr_job`` is an error (else its type is ``deduced_by_rr``)
     *
     * @throws MessageError when the body is not UTF-8 JSON, or (strict) ``rr_job`` is missing
     */
    public static function fromAmqp(AMQPMessage $amqp, bool $strict = true): self
    {
        $properties = $amqp->get_properties();
        $table = $properties['application_headers'] ?? null;
        $headers = $table instanceof AMQPTable ? $table->getNativeData() : [];
        $type = self::text($headers['rr_job'] ?? null);
        if ($type === null || $type === '') {
            if ($strict) {
                throw new MessageError('missing rr_job header (the message type)');
            }
            $type = self::UNKNOWN_JOB;
        }
        $body = $amqp->getBody();
        if (!mb_check_encoding($body, 'UTF-8')) {
            throw new MessageError('body is not UTF-8');
        }
        try {
            $payload = json_decode($body, true, 512, JSON_THROW_ON_ERROR);
        } catch (\JsonException $exc) {
            throw new MessageError('body is not JSON: ' . $exc->getMessage(), 0, $exc);
        }
        $timestamp = is_int($properties['timestamp'] ?? null) ? $properties['timestamp'] : null;
        $messageId = self::text($properties['message_id'] ?? null);
        $id = self::text($headers['rr_id'] ?? null);
        if ($id === null || $id === '') {
            $id = $messageId !== null && $messageId !== '' ? $messageId : self::contentId($type, $timestamp, $body);
        }
        $correlation = self::text($headers[self::CORRELATION_HEADER] ?? null) ?? self::text($properties['correlation_id'] ?? null);

        return new self(
            type: $type,
            payload: $payload,
            id: $id,
            headers: self::decodeHeaders($headers['rr_headers'] ?? null),
            pipeline: self::text($headers['rr_pipeline'] ?? null) ?? '',
            delay: self::integer($headers['rr_delay'] ?? null, 0),
            priority: self::integer($headers['rr_priority'] ?? null, self::DEFAULT_PRIORITY),
            autoAck: ($headers['rr_auto_ack'] ?? null) === true,
            tenant: self::text($headers[self::TENANT_HEADER] ?? null),
            correlationId: $correlation,
            traceparent: self::text($headers[self::TRACEPARENT_HEADER] ?? null),
            timestamp: $timestamp,
            attempt: self::integer($headers[self::ATTEMPT_HEADER] ?? null, 0),
            extra: array_diff_key($headers, array_flip(self::KNOWN)),
            rawBody: $body,
            exchange: (string) $amqp->getExchange(),
            routingKey: (string) $amqp->getRoutingKey(),
            redelivered: (bool) $amqp->isRedelivered(),
        );
    }

    /**
     * The AMQP field type of each header of a delivered message (``rr_delay`` => ``l``, ...),
     * for interop checks: php-amqplib's native values alone do not tell ``I`` from ``l``.
     *
     * @return array<string, string>
     */
    public static function fieldTypes(AMQPMessage $amqp): array
    {
        $table = $amqp->get_properties()['application_headers'] ?? null;
        $types = [];
        if ($table instanceof AMQPTable) {
            foreach ($table as $name => [$type, $value]) {
                $types[(string) $name] = AMQPTable::getSymbolForDataType($type);
            }
        }

        return $types;
    }

    /** @return array<string, list<string>> */
    private static function decodeHeaders(mixed $value): array
    {
        if (!is_string($value) || $value === '' || $value === '{}') {
            return [];
        }
        try {
            $decoded = json_decode($value, true, 512, JSON_THROW_ON_ERROR);
        } catch (\JsonException) {
            return []; // RoadRunner >= 2023.3 logs a warning and runs the job without them
        }
        if (!is_array($decoded) || array_is_list($decoded)) {
            return [];
        }
        $headers = [];
        foreach ($decoded as $name => $values) {
            // RoadRunner >= 2023.3 re-queues with its own rr_* keys inside rr_headers.
            if (str_starts_with((string) $name, 'rr_') || $values === null) {
                continue;
            }
            $headers[(string) $name] = is_array($values) ? array_map(self::scalarText(...), array_values($values)) : [self::scalarText($values)];
        }

        return $headers;
    }

    /**
     * @param array<string, mixed> $headers
     *
     * @return array<string, list<string>>
     */
    private static function normaliseHeaders(array $headers): array
    {
        $normal = [];
        foreach ($headers as $name => $values) {
            $normal[(string) $name] = is_array($values) ? array_map(self::scalarText(...), array_values($values)) : [self::scalarText($values)];
        }

        return $normal;
    }

    private static function scalarText(mixed $value): string
    {
        return match (true) {
            is_string($value) => $value,
            is_bool($value) => $value ? 'true' : 'false',
            is_scalar($value) => (string) $value,
            default => json_encode($value, JSON_UNESCAPED_SLASHES) ?: '',
        };
    }

    private static function text(mixed $value): ?string
    {
        if (is_string($value)) {
            return mb_check_encoding($value, 'UTF-8') ? $value : null;
        }

        return is_int($value) || is_float($value) ? (string) $value : null;
    }

    private static function integer(mixed $value, int $default): int
    {
        // Every integer width decodes to a PHP int; booleans and the rest give the default.
        return is_int($value) ? $value : $default;
    }
}
