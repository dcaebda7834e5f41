<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Support;

use Illuminate\Database\Eloquent\Model;
use Rabbitry\Laravel\PublishesChangeEvents;

/** An application's model, as a Laravel app declares it, with Rabbitry's trait. */
final class Task extends Model
{
    use PublishesChangeEvents;

    protected $table = 'tasks';
    protected $fillable = ['title', 'done', 'secret'];
    protected $hidden = ['secret'];
    protected $casts = ['done' => 'boolean'];

    public function changeEventEntity(): string
    {
        return 'App\Models\Task';
    }
}
