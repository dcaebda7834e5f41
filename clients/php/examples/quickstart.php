<?php

declare(strict_types=1);

// Publish a job for a Rabbitry (or RoadRunner) consumer and a change event for the workflow
// module, with Rabbitry's outbox as the fallback when RABBITRY_OUTBOX_DSN names its database.
require __DIR__ . '/../autoload.php'; // with Composer: require 'vendor/autoload.php';

use Rabbitry\Events\ChangeEvents;
use Rabbitry\Message;
use Rabbitry\Outbox;
use Rabbitry\Publisher;
use Rabbitry\Route;

$namespace = getenv('RABBITRY_NAMESPACE') ?: 'rabbitry';
$dsn = getenv('RABBITRY_OUTBOX_DSN'); // e.g. pgsql:host=127.0.0.1;dbname=rabbitry;user=rabbitry
$publisher = new Publisher(
    getenv('RABBITRY_AMQP_URL') ?: 'amqp://guest:guest@127.0.0.1:5672/',
    $dsn ? new Outbox(new PDO($dsn)) : null,
);

$job = new Message(
    type: 'App\Jobs\SendEmail',              // rr_job: what the consumer's handlers are keyed by
    payload: ['to' => 'a@example.com', 'template' => 'welcome'],
    headers: ['attempts' => ['0']],          // rr_headers
    pipeline: 'emails',                      // rr_pipeline
);
$result = $publisher->publish($job, Route::toQueue(getenv('EMAILS_QUEUE') ?: 'emails'));
echo "job {$result->id}: {$result->status}\n"; // published, or persisted in the outbox

$events = new ChangeEvents($publisher, $namespace);
$result = $events->insert('App\Models\Order', 7, ['total' => 10, 'state' => 'new'], user: 42);
echo "event {$result->id}: {$result->status}\n";
