<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Support;

/**
 * What the tests reach, from the environment (tests/e2e/test_php_client.py sets it all when
 * Rabbitry's test command runs this suite):
 *
 * | variable | default |
 * |---|---|
 * | RABBITRY_TEST_AMQP_URL | amqp://guest:guest@127.0.0.1:5672/ |
 * | RABBITRY_TEST_NAMESPACE_PREFIX | a random one (every test adds its own suffix) |
 * | RABBITRY_TEST_POSTGRES_ADMIN | host=127.0.0.1;port=5432;dbname=postgres;user=postgres |
 * | RABBITRY_BIN | the rabbitry command of ../../.venv (Rabbitry's checkout) |
 */
final class Env
{
    private static ?string $prefix = null;

    public static function amqpUrl(): string
    {
        return getenv('RABBITRY_TEST_AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/';
    }

    /** A URL nothing listens on: connecting is refused at once, as when RabbitMQ is down. */
    public static function deadAmqpUrl(): string
    {
        return 'amqp://guest:guest@127.0.0.1:1/';
    }

    /** Whether the broker objects are cleaned up by whoever set the prefix (the pytest run). */
    public static function cleanedOutside(): bool
    {
        return (getenv('RABBITRY_TEST_NAMESPACE_PREFIX') ?: '') !== '';
    }

    public static function newNamespace(): string
    {
        self::$prefix ??= getenv('RABBITRY_TEST_NAMESPACE_PREFIX') ?: 'tphp' . bin2hex(random_bytes(3));

        return self::$prefix . bin2hex(random_bytes(4));
    }

    public static function postgresAdmin(): string
    {
        return getenv('RABBITRY_TEST_POSTGRES_ADMIN') ?: 'host=127.0.0.1;port=5432;dbname=postgres;user=postgres';
    }

    public static function rabbitry(): string
    {
        $bin = getenv('RABBITRY_BIN') ?: dirname(__DIR__, 4) . '/.venv/bin/rabbitry';
        if (!is_executable($bin)) {
            throw new \RuntimeException("Rabbitry's command line is not at $bin: set RABBITRY_BIN");
        }

        return $bin;
    }
}
