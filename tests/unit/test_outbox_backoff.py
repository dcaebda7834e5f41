"""How long the relay leaves a failed row alone: doubling, capped at a minute after an outage
and at an hour after a refusal; and which reasons are refusals."""

from __future__ import annotations

import datetime as dt

from rabbitry.messaging.publisher import PublishResult, PublishStatus
from rabbitry.outbox.filters import Failure
from rabbitry.outbox.store import MAX_BACKOFF, MAX_REFUSED_BACKOFF, backoff


def test_backoff_doubles_then_caps() -> None:
    seconds = [backoff(n).total_seconds() for n in range(1, 9)]
    assert seconds[:5] == [2, 4, 8, 16, 32]
    assert max(seconds) == MAX_BACKOFF.total_seconds() == 60
    assert backoff(10_000) == MAX_BACKOFF


def test_backoff_of_nonsense_is_the_first_step() -> None:
    assert backoff(0) == backoff(-3) == dt.timedelta(seconds=2)


def test_a_refused_row_backs_off_from_half_a_minute_to_an_hour() -> None:
    seconds = [backoff(n, Failure.REFUSED).total_seconds() for n in range(1, 11)]
    assert seconds[:4] == [30, 60, 120, 240]
    assert max(seconds) == MAX_REFUSED_BACKOFF.total_seconds() == 3600
    assert backoff(10_000, Failure.REFUSED) == MAX_REFUSED_BACKOFF
    assert all(backoff(n, Failure.REFUSED) > backoff(n) for n in range(1, 20))


def test_the_broker_refusing_a_message_is_told_apart_from_the_broker_being_unavailable() -> None:
    refused = [
        "refused by the broker: NOT_FOUND - no exchange 'x' in vhost '/' (404)",
        "refused by the broker: ACCESS_REFUSED - write access to exchange 'x' (403)",
        "unroutable: no queue is bound for this exchange and routing key",
    ]
    unavailable = [
        "cannot connect to 127.0.0.1:1: connection refused",
        "no confirm within 5s",
        "broker nacked the message",
        "connection lost while publishing: CONNECTION_FORCED (320)",
        "rabbit_active is false: messages are stored, not sent",
    ]
    assert [Failure.of(r) for r in refused] == [Failure.REFUSED] * 3
    assert [Failure.of(r) for r in unavailable] == [Failure.UNAVAILABLE] * 5
    results = [PublishResult("id", PublishStatus.PERSISTED, r) for r in refused + unavailable]
    assert [r.refused for r in results] == [True] * 3 + [False] * 5
    assert not PublishResult("id", PublishStatus.PUBLISHED).refused
