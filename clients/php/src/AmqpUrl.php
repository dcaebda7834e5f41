<?php

declare(strict_types=1);

namespace Rabbitry;

/**
 * ``RABBITRY_AMQP_URL`` as Rabbitry reads it: ``amqp://user:password@host:port/vhost``,
 * ``amqps://`` for TLS, several hosts as ``h1:5672,h2:5672`` (the libpq form), user name,
 * password and vhost percent-encoded (``%2F`` is the vhost ``/``, an empty path too).
 */
final class AmqpUrl
{
    /**
     * @return array{hosts: list<array{string, int}>, user: string, password: string, vhost: string, secure: bool}
     */
    public static function parse(string $url): array
    {
        if (!preg_match('~^(amqps?)://(?:([^:@/]*)(?::([^@/]*))?@)?([^/?#]*)(?:/([^?#]*))?~', $url, $m)) {
            throw new \InvalidArgumentException('not an amqp:// or amqps:// URL');
        }
        $secure = $m[1] === 'amqps';
        $hosts = [];
        foreach (explode(',', $m[4] !== '' ? $m[4] : 'localhost') as $hostPort) {
            if (preg_match('~^\[([^\]]+)\](?::(\d+))?$~', $hostPort, $h) || preg_match('~^([^:]+)(?::(\d+))?$~', $hostPort, $h)) {
                $hosts[] = [$h[1], isset($h[2]) && $h[2] !== '' ? (int) $h[2] : ($secure ? 5671 : 5672)];
            } else {
                throw new \InvalidArgumentException('bad host in the AMQP URL');
            }
        }
        $vhost = isset($m[5]) ? rawurldecode($m[5]) : '';

        return [
            'hosts' => $hosts,
            'user' => rawurldecode($m[2] ?? '') ?: 'guest',
            'password' => rawurldecode($m[3] ?? '') ?: 'guest',
            'vhost' => $vhost === '' ? '/' : $vhost,
            'secure' => $secure,
        ];
    }
}
