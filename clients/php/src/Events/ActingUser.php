<?php

declare(strict_types=1);

namespace Rabbitry\Events;

/**
 * Who is acting, for the ``user`` of change events: the id of the authenticated user, or
 * ``"system"`` (console commands, queued jobs, nobody logged in). The Laravel service provider
 * plugs in Laravel's auth; other code calls {@see resolveUsing()} or runs a block {@see as()}.
 */
final class ActingUser
{
    /** @var null|\Closure(): (int|string|null) */
    private static ?\Closure $resolver = null;
    /** @var list<int|string> */
    private static array $stack = [];

    /** @param null|callable(): (int|string|null) $resolver the current user's id, or null for "system" */
    public static function resolveUsing(?callable $resolver): void
    {
        self::$resolver = $resolver === null ? null : \Closure::fromCallable($resolver);
    }

    /**
     * Run ``$block`` with ``$user`` as the acting user (a job acting for a user, a test).
     *
     * @template T
     *
     * @param callable(): T $block
     *
     * @return T
     */
    public static function as(int|string $user, callable $block): mixed
    {
        self::$stack[] = $user;
        try {
            return $block();
        } finally {
            array_pop(self::$stack);
        }
    }

    public static function current(): int|string
    {
        if (self::$stack !== []) {
            return self::$stack[array_key_last(self::$stack)];
        }
        $user = self::$resolver !== null ? (self::$resolver)() : null;

        return $user ?? ChangeEvent::SYSTEM;
    }
}
