<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Support;

use Illuminate\Container\Container;
use Illuminate\Database\Capsule\Manager as Capsule;
use Illuminate\Database\Eloquent\Model;
use Illuminate\Database\Schema\Blueprint;
use Illuminate\Events\Dispatcher;

/** Eloquent outside Laravel (Capsule) on an SQLite database, with model events on. */
final class Eloquent
{
    public static function boot(string $database = ':memory:'): Capsule
    {
        $capsule = new Capsule(new Container());
        $capsule->addConnection(['driver' => 'sqlite', 'database' => $database, 'prefix' => '']);
        $capsule->setEventDispatcher(new Dispatcher(new Container()));
        $capsule->setAsGlobal();
        $capsule->bootEloquent();
        // Models register their event listeners when they boot: boot them again with this dispatcher.
        Model::clearBootedModels();
        $capsule->schema()->create('tasks', static function (Blueprint $table): void {
            $table->id();
            $table->string('title');
            $table->boolean('done')->default(false);
            $table->string('secret')->nullable();
            $table->timestamps();
        });

        return $capsule;
    }
}
