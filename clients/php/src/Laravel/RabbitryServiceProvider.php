<?php

declare(strict_types=1);

namespace Rabbitry\Laravel;

use Illuminate\Support\ServiceProvider;
use Rabbitry\Events\ActingUser;
use Rabbitry\Events\ChangeEvents;
use Rabbitry\Outbox;
use Rabbitry\Publisher;

/**
 * Wires Rabbitry into Laravel from ``config/rabbitry.php``: a shared {@see Publisher} (with
 * Rabbitry's outbox on the configured database connection), {@see ChangeEvents}, the Eloquent
 * change events of models using {@see PublishesChangeEvents}, and the acting user (the
 * authenticated user's id; ``"system"`` in console commands, queued jobs and for guests).
 */
final class RabbitryServiceProvider extends ServiceProvider
{
    public const CONFIG = __DIR__ . '/../../config/rabbitry.php';

    public function register(): void
    {
        $this->mergeConfigFrom(self::CONFIG, 'rabbitry');
        $this->app->singleton(Publisher::class, function ($app): Publisher {
            $config = $app->make('config')->get('rabbitry');
            $connection = $config['outbox']['connection'] ?? null;
            $outbox = $connection === null || $connection === '' ? null : new Outbox($app->make('db')->connection($connection)->getPdo());

            return new Publisher(
                (string) $config['amqp_url'],
                $outbox,
                filter_var($config['rabbit_active'], FILTER_VALIDATE_BOOL),
                (float) $config['publish_timeout'],
            );
        });
        $this->app->singleton(ChangeEvents::class, fn ($app): ChangeEvents => new ChangeEvents(
            $app->make(Publisher::class),
            (string) $app->make('config')->get('rabbitry.namespace'),
        ));
    }

    public function boot(): void
    {
        if (function_exists('config_path')) {
            $this->publishes([self::CONFIG => config_path('rabbitry.php')], 'rabbitry-config');
        }
        $app = $this->app;
        ChangeRecorder::publishWith(static fn (): ChangeEvents => $app->make(ChangeEvents::class));
        ActingUser::resolveUsing(static function () use ($app): int|string|null {
            // Console commands and queued jobs act as "system", whoever started them.
            if (method_exists($app, 'runningInConsole') && $app->runningInConsole()) {
                return null;
            }

            return $app->bound('auth') ? $app->make('auth')->id() : null;
        });
    }
}
