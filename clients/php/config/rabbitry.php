<?php

declare(strict_types=1);

// Rabbitry's PHP companion: `php artisan vendor:publish --tag=rabbitry-config` copies this file
// to config/rabbitry.php. The variables are those of Rabbitry's own processes.

// Laravel's env() where Laravel's .env support is installed; the process environment elsewhere.
$env = static function (string $key, mixed $default = null): mixed {
    if (function_exists('env') && class_exists(\Dotenv\Repository\RepositoryBuilder::class)) {
        return env($key, $default);
    }
    $value = getenv($key);

    return $value === false ? $default : $value;
};

return [
    // The broker: amqp://user:password@host:port/vhost (amqps:// for TLS, h1:5672,h2:5672 for a cluster).
    'amqp_url' => $env('RABBITRY_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/'),

    // Prefix of every exchange and queue: change events go to "<namespace>.events".
    'namespace' => $env('RABBITRY_NAMESPACE', 'rabbitry'),

    // false: never try the broker, store every message in the outbox (needs outbox.connection).
    'rabbit_active' => $env('RABBITRY_RABBIT_ACTIVE', true),

    // Seconds to wait for the broker (connect, and each publisher confirm).
    'publish_timeout' => $env('RABBITRY_PUBLISH_TIMEOUT', 5.0),

    'outbox' => [
        // The name of a connection in config/database.php to Rabbitry's database (the one
        // RABBITRY_DATABASE_URL names): a message the broker cannot take is stored there for
        // `rabbitry requeue` and the relay. null: no outbox, such a publish throws PublishFailed.
        'connection' => $env('RABBITRY_OUTBOX_CONNECTION'),
    ],
];
