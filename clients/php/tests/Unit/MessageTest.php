<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Unit;

use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPBufferReader;
use PhpAmqpLib\Wire\AMQPTable;
use PhpAmqpLib\Wire\AMQPWriter;
use PHPUnit\Framework\TestCase;
use Rabbitry\Exception\MessageError;
use Rabbitry\Message;

/** The wire format, byte for byte against what Rabbitry's Python envelope writes (no broker). */
final class MessageTest extends TestCase
{
    private const ID = '0b6f2a64-6d0e-4a8a-9c55-7a5b3f3c2b11';

    // rabbitry.messaging.envelope.encode + fieldtable.encode_table of the same messages.
    private const E1_TABLE = '000000bb0572725f6964530000002430623666326136342d366430652d346138612d396335352d3761356233663363326231310672725f6a6f6253000000124170705c4a6f62735c53656e64456d61696c0b72725f706970656c696e655300000006656d61696c730a72725f6865616465727378000000127b22617474656d707473223a5b2230225d7d0872725f64656c61796c00000000000000000b72725f7072696f726974796c000000000000000a0b72725f6175746f5f61636b7400';
    private const FULL_TABLE = '0000010c0572725f6964530000002430623666326136342d366430652d346138612d396335352d3761356233663363326231310672725f6a6f625300000006696e736572740b72725f706970656c696e6553000000000a72725f6865616465727378000000197b2270617468223a5b22612f62222c225c7530306539225d7d0872725f64656c61796c000000000000003c0b72725f7072696f726974796c00000000000000030b72725f6175746f5f61636b740108782d74656e616e74530000000461636d6510782d636f7272656c6174696f6e2d69645300000003632d310b7472616365706172656e74530000000430302d7812782d72616262697472792d617474656d70746c0000000000000002';
    private const FULL_BODY = '{"entity":"App\\\\Models\\\\Task","id":1,"user":7,"data":{"title":"Écrire / docs","n":1.0}}';

    public function testTheCanonicalJobIsTheSame191BytesPythonWrites(): void
    {
        $job = new Message(
            type: 'App\Jobs\SendEmail',
            payload: ['to' => 'a@example.com', 'template' => 'welcome'],
            id: self::ID,
            headers: ['attempts' => ['0']],
            pipeline: 'emails',
        );

        self::assertSame(self::E1_TABLE, bin2hex(self::wire($job->headerTable())));
        self::assertSame('{"to":"a@example.com","template":"welcome"}', $job->body());
    }

    public function testEveryHeaderAndTheBodyMatchPythonsBytes(): void
    {
        $message = new Message(
            type: 'insert',
            payload: ['entity' => 'App\Models\Task', 'id' => 1, 'user' => 7, 'data' => ['title' => 'Écrire / docs', 'n' => 1.0]],
            id: self::ID,
            headers: ['path' => ['a/b', 'é']],
            delay: 60,
            priority: 3,
            autoAck: true,
            tenant: 'acme',
            correlationId: 'c-1',
            traceparent: '00-x',
            attempt: 2,
        );

        self::assertSame(self::FULL_TABLE, bin2hex(self::wire($message->headerTable())));
        self::assertSame(self::FULL_BODY, $message->body());
    }

    public function testPropertiesArePersistentJsonWithTheIdAndTime(): void
    {
        $amqp = (new Message('t', ['a' => 1], id: self::ID, timestamp: 1738834200, correlationId: 'c-1'))->toAmqp();

        self::assertSame([
            'content_type' => 'application/json',
            'delivery_mode' => 2,
            'message_id' => self::ID,
            'timestamp' => 1738834200,
            'correlation_id' => 'c-1',
        ], array_diff_key($amqp->get_properties(), ['application_headers' => true]));
    }

    public function testSmallIntegersOfExtraHeadersStaySigned64Bit(): void
    {
        $types = self::typesOf((new Message('t', [], extra: ['x-count' => 3, 'x-name' => 'n', 'rr_delay' => 'ignored']))->headerTable());

        self::assertSame('l', $types['x-count']);
        self::assertSame('S', $types['x-name']);
        self::assertSame('l', $types['rr_delay']); // an extra never replaces a header of Rabbitry's
    }

    public function testAMessageReadBackIsTheMessageSent(): void
    {
        $sent = new Message(
            type: 'App\Jobs\SendEmail',
            payload: ['to' => 'é@example.com', 'n' => 1.5, 'ok' => true, 'none' => null, 'list' => [1, 2]],
            headers: ['attempts' => '1'],
            pipeline: 'emails',
            delay: 5,
            priority: 1,
            autoAck: true,
            tenant: 'acme',
            correlationId: 'c-9',
            traceparent: '00-abc',
            timestamp: 1738834200,
            attempt: 4,
            extra: ['x-custom' => 'yes'],
        );
        $read = Message::fromAmqp(self::overTheWire($sent->toAmqp()));

        self::assertSame(
            [$sent->type, $sent->id, $sent->payload, ['attempts' => ['1']], 'emails', 5, 1, true, 'acme', 'c-9', '00-abc', 1738834200, 4, ['x-custom' => 'yes']],
            [$read->type, $read->id, $read->payload, $read->headers, $read->pipeline, $read->delay, $read->priority, $read->autoAck, $read->tenant, $read->correlationId, $read->traceparent, $read->timestamp, $read->attempt, $read->extra],
        );
        self::assertSame($sent->body(), $read->rawBody);
    }

    public function testForeignMessagesAreReadLeniently(): void
    {
        // Stock clients' widths (pika's I, aio-pika's b), rr_headers as a string, no rr_auto_ack.
        $table = new AMQPTable();
        $table->set('rr_job', 'App\Jobs\SendEmail', AMQPTable::T_BYTES);
        $table->set('rr_headers', '{"a":"b","rr_id":["old"],"c":["1",2]}', AMQPTable::T_STRING_LONG);
        $table->set('rr_delay', 300, AMQPTable::T_INT_LONG);
        $table->set('rr_priority', 10, AMQPTable::T_INT_SHORTSHORT);
        $amqp = new AMQPMessage('{"to":"b@example.com"}', ['application_headers' => $table, 'message_id' => 'legacy-1']);
        $read = Message::fromAmqp(self::overTheWire($amqp));

        self::assertSame(['App\Jobs\SendEmail', 'legacy-1', ['a' => ['b'], 'c' => ['1', '2']], 300, 10, false], [$read->type, $read->id, $read->headers, $read->delay, $read->priority, $read->autoAck]);
    }

    public function testUnreadableHeadersGiveDefaultsNotErrors(): void
    {
        $table = new AMQPTable(['rr_job' => 'j', 'rr_headers' => '{broken', 'rr_delay' => 'soon', 'rr_priority' => true]);
        $read = Message::fromAmqp(self::overTheWire(new AMQPMessage('[]', ['application_headers' => $table])));

        self::assertSame([[], 0, 10], [$read->headers, $read->delay, $read->priority]);
    }

    public function testWithoutAnyIdTheIdIsDerivedFromTheContentAsPythonDerivesIt(): void
    {
        $table = new AMQPTable(['rr_job' => 'App\Jobs\SendEmail']);
        $amqp = new AMQPMessage('{"to":"b@example.com"}', ['application_headers' => $table, 'timestamp' => 1738834200]);

        // rabbitry.messaging.envelope.content_id of the same type, timestamp and body.
        self::assertSame('sha256:19a1dc10e4122856db84b52dea7e6f1c', Message::fromAmqp(self::overTheWire($amqp))->id);
        self::assertSame('sha256:6b85a6c1db7d05f51d97b0e417d2a8fb', Message::contentId('App\Jobs\SendEmail', null, '{"to":"b@example.com"}'));
    }

    public function testWithoutRrJobAStrictReaderRefusesAndALenientOneDeduces(): void
    {
        $amqp = self::overTheWire(new AMQPMessage('{}', ['application_headers' => new AMQPTable(['rr-job' => 'v1'])]));

        self::assertSame(Message::UNKNOWN_JOB, Message::fromAmqp($amqp, strict: false)->type);
        $this->expectExceptionObject(new MessageError('missing rr_job header (the message type)'));
        Message::fromAmqp($amqp);
    }

    public function testABodyThatIsNotJsonIsAMessageError(): void
    {
        $amqp = new AMQPMessage('{not json', ['application_headers' => new AMQPTable(['rr_job' => 'delete'])]);

        $this->expectException(MessageError::class);
        $this->expectExceptionMessageMatches('/^body is not JSON: /');
        Message::fromAmqp($amqp);
    }

    public function testAPayloadThatIsNotJsonFailsBeforeSending(): void
    {
        $this->expectException(MessageError::class);
        $this->expectExceptionMessageMatches('/^payload is not JSON-serialisable: /');
        (new Message('t', ['n' => NAN]))->body();
    }

    public function testNewIdsAreVersion7UuidsThatLeadWithTheTime(): void
    {
        $before = (int) floor(microtime(true) * 1000);
        $first = Message::newId();
        usleep(2000);
        $second = Message::newId();
        $after = (int) floor(microtime(true) * 1000);
        foreach ([$first, $second] as $id) {
            self::assertMatchesRegularExpression('/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/', $id);
            $made = hexdec(str_replace('-', '', substr($id, 0, 13)));
            self::assertGreaterThanOrEqual($before, $made);
            self::assertLessThanOrEqual($after, $made);
        }
        self::assertLessThan(0, strcmp($first, $second));
        self::assertNotSame(Message::newId(), Message::newId());
    }

    private static function wire(AMQPTable $table): string
    {
        return (new AMQPWriter())->write_table($table)->getvalue();
    }

    /** @return array<string, string> */
    private static function typesOf(AMQPTable $table): array
    {
        $reader = new AMQPBufferReader(self::wire($table));

        return Message::fieldTypes(new AMQPMessage('', ['application_headers' => $reader->read_table(true)]));
    }

    /** ``$amqp`` as a consumer gets it: its header table encoded and decoded again. */
    private static function overTheWire(AMQPMessage $amqp): AMQPMessage
    {
        $properties = $amqp->get_properties();
        if (isset($properties['application_headers'])) {
            $properties['application_headers'] = (new AMQPBufferReader(self::wire($properties['application_headers'])))->read_table(true);
        }

        return new AMQPMessage($amqp->getBody(), $properties);
    }
}
