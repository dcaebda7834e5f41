"""What becomes of a delivery whose handler failed, decided without a broker: retried in the
policy's tier, at the attempt its header counts, or dead-lettered with the reason it carries."""

from __future__ import annotations

from rabbitry.amqp.base import Received
from rabbitry.amqp.fieldtable import Int64
from rabbitry.amqp.properties import Properties
from rabbitry.errors import MessageError
from rabbitry.messaging.envelope import ATTEMPT_HEADER
from rabbitry.messaging.retry import RetryPolicy
from rabbitry.messaging.settlement import Reject, Retry, copy_properties, failed

POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, factor=2.0, max_delay=10.0)


def delivery(headers: dict[str, object] | None = None) -> Received:
    props = Properties(headers=headers, message_id="m1", reply_to="amq.rabbitmq.reply-to")
    return Received(1, False, "", "q", "ctag", props, b"{}")


def test_a_handler_error_is_retried_in_the_policys_first_tier_as_attempt_one() -> None:
    decision = failed(delivery(), ValueError("boom"), POLICY)
    assert (decision.attempt, decision.delay) == (1, 1000)
    assert (decision.reason, decision.error) == ("boom", "ValueError: boom")


def test_the_attempt_header_counts_and_the_last_attempt_is_dead_lettered() -> None:
    assert failed(delivery({ATTEMPT_HEADER: Int64(1)}), ValueError(), POLICY).delay == 2000
    last = failed(delivery({ATTEMPT_HEADER: Int64(2)}), ValueError("still"), POLICY)
    assert (last.attempt, last.delay) == (3, None)


def test_a_retry_asks_for_its_delay_and_says_why() -> None:
    decision = failed(delivery(), Retry(delay=1.5, reason="busy"), POLICY)
    assert (decision.delay, decision.reason, decision.error) == (2000, "busy", "Retry: busy")


def test_a_rejected_or_malformed_message_is_dead_lettered_at_once() -> None:
    rejected = failed(delivery(), Reject("never"), POLICY)
    assert (rejected.attempt, rejected.delay, rejected.reason) == (1, None, "never")
    assert failed(delivery(), MessageError("bad json"), POLICY).delay is None


def test_an_attempt_header_that_is_not_a_whole_number_counts_as_none() -> None:
    for odd in (True, "2", 2.0):
        assert failed(delivery({ATTEMPT_HEADER: odd}), ValueError(), POLICY).attempt == 1


def test_the_error_is_cut_at_a_thousand_characters() -> None:
    assert len(failed(delivery(), ValueError("x" * 5000), POLICY).error) == 1000


def test_a_copy_is_persistent_and_carries_the_extra_headers_over_the_originals() -> None:
    original = delivery({"a": 1, ATTEMPT_HEADER: Int64(1)}).properties
    copy = copy_properties(original, {ATTEMPT_HEADER: Int64(2), "b": "x"})
    assert copy.delivery_mode == 2
    assert copy.headers == {"a": 1, ATTEMPT_HEADER: 2, "b": "x"}
    assert (copy.message_id, copy.reply_to) == ("m1", "amq.rabbitmq.reply-to")
    assert original.headers == {"a": 1, ATTEMPT_HEADER: 1}
