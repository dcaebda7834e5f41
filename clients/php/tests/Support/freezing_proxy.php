<?php

declare(strict_types=1);

/*
 * A TCP proxy to the broker that can fall silent or cut connections. It forwards both ways;
 * while FREEZEFILE exists it drops everything the broker sends (the connection stays open), as
 * a broker under a memory alarm or a frozen network path does; when CUTFILE appears it closes
 * every connection it carries (as a broker restart or a load balancer's idle timeout does),
 * then deletes CUTFILE. It writes the port it listens on to PORTFILE.
 * Usage: php freezing_proxy.php PORTFILE FREEZEFILE CUTFILE HOST:PORT. Ends when killed.
 */

[, $portFile, $freezeFile, $cutFile, $upstream] = $argv;
$server = stream_socket_server('tcp://127.0.0.1:0');
file_put_contents($portFile, substr((string) stream_socket_get_name($server, false), strlen('127.0.0.1:')));
$pairs = [];
while (true) {
    if (file_exists($cutFile)) {
        foreach ($pairs as [$client, $broker]) {
            fclose($client);
            fclose($broker);
        }
        $pairs = [];
        unlink($cutFile);
    }
    $read = [$server];
    foreach ($pairs as [$client, $broker]) {
        $read[] = $client;
        $read[] = $broker;
    }
    $write = $except = null;
    if (stream_select($read, $write, $except, 0, 50_000) === false) {
        exit(1);
    }
    foreach ($read as $stream) {
        if ($stream === $server) {
            $client = stream_socket_accept($server);
            $broker = stream_socket_client('tcp://' . $upstream);
            $pairs[] = [$client, $broker];
            continue;
        }
        foreach ($pairs as $i => [$client, $broker]) {
            if ($stream !== $client && $stream !== $broker) {
                continue;
            }
            $data = fread($stream, 65536);
            if ($data === '' || $data === false) {
                fclose($client);
                fclose($broker);
                unset($pairs[$i]);
                break;
            }
            if ($stream === $client) {
                fwrite($broker, $data);
            } elseif (!file_exists($freezeFile)) {
                fwrite($client, $data);
            }
        }
    }
}
