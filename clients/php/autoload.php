<?php

declare(strict_types=1);

/*
 * The package's autoloader for installs without Composer (Debian's php-amqplib and
 * php-illuminate-* packages, as on Rabbitry's own machines): Debian's autoloaders for the
 * dependencies, then PSR-4 for Rabbitry\ from src/. With Composer, use vendor/autoload.php.
 */

if (!class_exists(\PhpAmqpLib\Connection\AMQPStreamConnection::class)) {
    require_once 'PhpAmqpLib/autoload.php';
}
// Eloquent, its events and Laravel's config are optional: only the Laravel part needs them.
foreach (['Illuminate/Database/autoload.php', 'Illuminate/Events/autoload.php', 'Illuminate/Config/autoload.php'] as $optional) {
    if (stream_resolve_include_path($optional) !== false) {
        require_once $optional;
    }
}

spl_autoload_register(static function (string $class): void {
    $prefix = 'Rabbitry\\';
    if (!str_starts_with($class, $prefix)) {
        return;
    }
    $file = __DIR__ . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});

require_once __DIR__ . '/src/functions.php';
