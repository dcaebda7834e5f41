<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Support;

/**
 * Scratch databases of Rabbitry's two backends, migrated by Rabbitry itself (``rabbitry db
 * upgrade``): the tests write into the very tables the Python side created.
 */
final class Databases
{
    public const BACKENDS = ['sqlite' => ['sqlite'], 'postgresql' => ['postgresql']];

    /**
     * A fresh database of ``$kind``: a PDO on it, its URL for Rabbitry, and the clean-up.
     *
     * @return array{\PDO, string, \Closure(): void}
     */
    public static function create(string $kind, string $dir): array
    {
        if ($kind === 'sqlite') {
            $file = $dir . '/rabbitry.db';

            return [new \PDO('sqlite:' . $file), 'sqlite:///' . $file, static function (): void {}];
        }
        $admin = self::dsn(Env::postgresAdmin());
        $name = 'rabbitry_php_' . bin2hex(random_bytes(8));
        $root = new \PDO('pgsql:' . Env::postgresAdmin());
        $root->exec("CREATE DATABASE \"$name\""); // our own name: [a-z0-9_] only
        $root = null;
        $params = ['host' => $admin['host'] ?? '127.0.0.1', 'port' => $admin['port'] ?? '5432', 'user' => $admin['user'] ?? 'postgres'];
        $pdo = new \PDO(sprintf('pgsql:host=%s;port=%s;dbname=%s;user=%s', $params['host'], $params['port'], $name, $params['user']));
        $url = sprintf('postgresql://%s@%s:%s/%s', $params['user'], $params['host'], $params['port'], $name);

        return [$pdo, $url, static function () use (&$pdo, $name): void {
            $pdo = null;
            (new \PDO('pgsql:' . Env::postgresAdmin()))->exec("DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)");
        }];
    }

    /** @return array<string, string> */
    private static function dsn(string $dsn): array
    {
        $parts = [];
        foreach (explode(';', $dsn) as $pair) {
            if (str_contains($pair, '=')) {
                [$key, $value] = explode('=', $pair, 2);
                $parts[trim($key)] = trim($value);
            }
        }

        return $parts;
    }
}
