<?php

declare(strict_types=1);

// Every notice and warning is a failure, as filterwarnings=error is on the Python side.
error_reporting(E_ALL);
set_error_handler(static function (int $severity, string $message, string $file, int $line): bool {
    if ((error_reporting() & $severity) === 0) {
        return false; // silenced with @ on purpose (php-amqplib does, on a socket it knows is dead)
    }
    throw new \ErrorException($message, 0, $severity, $file, $line);
});

if (is_file(__DIR__ . '/../vendor/autoload.php')) {
    require __DIR__ . '/../vendor/autoload.php'; // installed with Composer
} else {
    require __DIR__ . '/../autoload.php'; // Debian's packages
    spl_autoload_register(static function (string $class): void {
        $prefix = 'Rabbitry\\Tests\\';
        if (str_starts_with($class, $prefix)) {
            $file = __DIR__ . '/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
            }
        }
    });
}
