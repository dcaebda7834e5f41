<?php

declare(strict_types=1);

namespace Rabbitry\Laravel;

use Rabbitry\Events\ChangeEvent;

/**
 * Publishes an Eloquent model's changes as Rabbitry change events, after the transaction
 * commits (nothing for a rollback):
 *
 *     class Task extends Model
 *     {
 *         use \Rabbitry\Laravel\PublishesChangeEvents;
 *     }
 *
 * ``created`` is an ``insert`` with the model's attributes, ``updated`` an ``update`` with
 * only the changed ones, ``deleted`` a ``delete`` (a soft delete too). Values are cast as
 * ``toArray()`` casts them, and ``$hidden`` attributes never leave. The entity is the model's
 * class (``App\Models\Task``); define ``changeEventEntity(): string`` to name it otherwise.
 * The user is the acting user at the time of the change ({@see \Rabbitry\Events\ActingUser}).
 * Mass updates and deletes through the query builder fire no model events, so they publish
 * nothing: use {@see \Rabbitry\Events\ChangeEvents} for those.
 */
trait PublishesChangeEvents
{
    public static function bootPublishesChangeEvents(): void
    {
        static::created(static fn ($model) => ChangeRecorder::instance()->record($model, ChangeEvent::INSERT));
        static::updated(static fn ($model) => ChangeRecorder::instance()->record($model, ChangeEvent::UPDATE));
        static::deleted(static fn ($model) => ChangeRecorder::instance()->record($model, ChangeEvent::DELETE));
    }
}
