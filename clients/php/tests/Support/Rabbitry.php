<?php

declare(strict_types=1);

namespace Rabbitry\Tests\Support;

/**
 * Rabbitry's Python side, driven through its command line as an operator would: each call
 * runs ``rabbitry`` with the test's namespace, broker and database, none of the caller's
 * RABBITRY_* variables.
 */
final class Rabbitry
{
    /** @var array<string, string> */
    private array $env;
    /** @var list<resource> */
    private array $running = [];

    public function __construct(string $namespace, ?string $databaseUrl = null, string $dataDir = '')
    {
        $env = array_filter(getenv(), static fn (string $k): bool => !str_starts_with($k, 'RABBITRY_'), ARRAY_FILTER_USE_KEY);
        $env['RABBITRY_NAMESPACE'] = $namespace;
        $env['RABBITRY_AMQP_URL'] = Env::amqpUrl();
        $env['RABBITRY_DATA_DIR'] = $dataDir !== '' ? $dataDir : sys_get_temp_dir();
        $env['RABBITRY_CONNECT_TIMEOUT'] = '5';
        $env['COLUMNS'] = '200';
        if ($databaseUrl !== null) {
            $env['RABBITRY_DATABASE_URL'] = $databaseUrl;
        }
        $this->env = $env;
    }

    /**
     * Run ``rabbitry ARGS`` to its end (at most ``$timeout`` seconds).
     *
     * @param list<string> $args
     *
     * @return array{int, string, string} exit code, standard output, standard error
     */
    public function run(array $args, float $timeout = 120.0, string $stdin = ''): array
    {
        $process = proc_open([Env::rabbitry(), ...$args], [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes, null, $this->env);
        if (!is_resource($process)) {
            throw new \RuntimeException('cannot start rabbitry');
        }
        fwrite($pipes[0], $stdin);
        fclose($pipes[0]);
        stream_set_blocking($pipes[1], false);
        stream_set_blocking($pipes[2], false);
        $out = $err = '';
        $deadline = microtime(true) + $timeout;
        while (true) {
            $read = [$pipes[1], $pipes[2]];
            $write = $except = null;
            if (@stream_select($read, $write, $except, 0, 200_000) > 0) {
                foreach ($read as $pipe) {
                    $chunk = (string) fread($pipe, 65536);
                    $pipe === $pipes[1] ? $out .= $chunk : $err .= $chunk;
                }
            }
            if (feof($pipes[1]) && feof($pipes[2])) {
                break;
            }
            if (microtime(true) > $deadline) {
                proc_terminate($process, 9);
                throw new \RuntimeException(sprintf("rabbitry %s did not finish in %gs; output:\n%s\n%s", implode(' ', $args), $timeout, $out, $err));
            }
        }
        fclose($pipes[1]);
        fclose($pipes[2]);

        return [proc_close($process), $out, $err];
    }

    /**
     * Run ``rabbitry ARGS`` and return its output; a non-zero exit fails with its output.
     *
     * @param list<string> $args
     */
    public function ok(array $args, float $timeout = 120.0): string
    {
        [$code, $out, $err] = $this->run($args, $timeout);
        if ($code !== 0) {
            throw new \RuntimeException(sprintf("rabbitry %s exited %d:\n%s\n%s", implode(' ', $args), $code, $out, $err));
        }

        return $out;
    }

    /**
     * Start a long-running ``rabbitry ARGS`` (a worker); {@see stopAll()} ends it.
     *
     * @param list<string> $args
     */
    public function start(array $args, string $log): void
    {
        $process = proc_open([Env::rabbitry(), ...$args], [0 => ['file', '/dev/null', 'r'], 1 => ['file', $log, 'w'], 2 => ['file', $log, 'a']], $pipes, null, $this->env);
        if (!is_resource($process)) {
            throw new \RuntimeException('cannot start rabbitry ' . implode(' ', $args));
        }
        $this->running[] = $process;
    }

    /** SIGTERM every started process (a graceful drain), and wait for each to exit. */
    public function stopAll(float $timeout = 30.0): void
    {
        foreach ($this->running as $process) {
            proc_terminate($process, 15);
            $deadline = microtime(true) + $timeout;
            while (proc_get_status($process)['running']) {
                if (microtime(true) > $deadline) {
                    proc_terminate($process, 9);
                    break;
                }
                usleep(50_000);
            }
            proc_close($process);
        }
        $this->running = [];
    }
}
