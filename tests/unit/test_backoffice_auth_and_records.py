"""The back-office's pure parts: session cookies and CSRF tokens, and what a record sent with ▶
becomes for a registry queue."""

from __future__ import annotations

import pytest

from rabbitry.backoffice.auth import Session, Signer
from rabbitry.backoffice.records import RecordError, message_for, routing_key
from rabbitry.outbox.message import PageKey
from rabbitry.outbox.registry import QueueInfo
from rabbitry.storage.listing import Record


def entry(**fields: object) -> QueueInfo:
    values: dict[str, object] = {
        "name": "q",
        "description": "",
        "allow_manual_insertion": True,
        "classname": "rabbitry.sessions.User",
        "exchange": "ns.tenants",
        "routing_key": "{tenant}.session-removal",
        "active": True,
    }
    values.update(fields)
    return QueueInfo(**values)  # type: ignore[arg-type]


USER = Record(
    "users",
    "rabbitry.sessions.User",
    "7",
    {"id": 7, "user_id": 7, "tenant": "acme", "username": "bob"},
    entity_id=7,
    change_data={"tenant": "acme", "username": "bob"},
    tenant="acme",
)


def test_a_session_cookie_round_trips_and_a_tampered_one_is_refused() -> None:
    signer = Signer("admin-token")
    session = Session.anonymous().logged_in()
    cookie = signer.dump(session)
    assert signer.load(cookie) == session
    data, _, mac = cookie.rpartition(".")
    assert signer.load(data + "x." + mac) is None
    assert Signer("another-token").load(cookie) is None
    assert signer.load("garbage") is None and signer.load(None) is None


def test_an_expired_session_is_refused() -> None:
    signer = Signer("t")
    session = Session("sid", True, expires=1000)
    assert signer.load(signer.dump(session), now=999) == session
    assert signer.load(signer.dump(session), now=1001) is None


def test_logging_in_starts_a_new_session_id_and_so_a_new_csrf_token() -> None:
    signer = Signer("t")
    before = Session.anonymous()
    after = before.logged_in()
    assert after.auth and after.sid != before.sid
    assert signer.csrf_ok(after, signer.csrf(after))
    assert not signer.csrf_ok(after, signer.csrf(before))
    assert not signer.csrf_ok(after, None) and not signer.csrf_ok(after, "")


def test_the_credential_is_the_admin_token_only() -> None:
    signer = Signer("s3cret")
    assert signer.credential_ok("s3cret")
    assert not signer.credential_ok("s3cre") and not signer.credential_ok("")


def test_a_routing_key_template_takes_the_records_checked_values() -> None:
    assert routing_key("{tenant}.session-removal", USER) == "acme.session-removal"
    with pytest.raises(RecordError, match="lacks"):
        routing_key("{room}.x", USER)
    evil = Record("users", "c", "1", {"tenant": "a.#"})
    with pytest.raises(RecordError, match="cannot be part of a routing key"):
        routing_key("{tenant}.session-removal", evil)


def test_a_record_becomes_its_fields_with_the_entrys_message_type() -> None:
    message, key = message_for(entry(message_type="session-removal"), USER)
    assert key == "acme.session-removal"
    assert message.type == "session-removal" and message.tenant == "acme"
    assert message.payload == dict(USER.fields)
    assert message.extra["x-rabbitry-manual"] == "users:7"


def test_a_change_payload_is_a_change_event_of_the_record_typed_by_the_routing_key() -> None:
    change = entry(exchange="ns.events", routing_key="update", payload="change")
    message, key = message_for(change, USER)
    assert (message.type, key) == ("update", "update")
    assert message.payload == {
        "entity": "rabbitry.sessions.User",
        "id": 7,
        "user": "system",
        "data": {"tenant": "acme", "username": "bob"},
    }
    with pytest.raises(RecordError, match="insert, update or delete"):
        message_for(entry(routing_key="x", payload="change"), USER)
    room = Record("rooms", "rabbitry.chat.Room", "acme:lobby", {"tenant": "acme"})
    with pytest.raises(RecordError, match="no numeric id"):
        message_for(change, room)


def test_a_page_key_round_trips_and_junk_is_refused() -> None:
    import datetime as dt

    key = PageKey(dt.datetime(2024, 7, 1, 10, 0, 0, 123456, tzinfo=dt.UTC), 42)
    assert PageKey.parse(key.token()) == key
    for junk in ("", "42", "x_1", "20240701T100000.000000_", "20240701T100000.000000_a"):
        with pytest.raises(ValueError):
            PageKey.parse(junk)


def test_the_example_registrys_user_actions_make_messages_their_consumers_accept() -> None:
    from pathlib import Path

    from rabbitry.config import load_settings
    from rabbitry.events.change import parse_change
    from rabbitry.sessions.removal import RemovalRequest

    example = Path(__file__).parents[2] / "examples" / "rabbitry.yaml"
    entries = {q.name: q for q in load_settings(example).queues}

    def info(name: str) -> QueueInfo:
        q = entries[name]
        return entry(**q.model_dump(exclude={"name"}), name=q.name)

    revoke, key = message_for(info("user-revoke-sessions"), USER)
    assert key == "acme.session-removal"
    assert RemovalRequest.parse(revoke) == RemovalRequest("acme", 7)  # what DISPATCH reads
    change, key = message_for(info("user-change-event"), USER)
    assert key == "update"
    parsed = parse_change(change.type, change.payload)  # what the workflow module stores
    assert (parsed.entity, parsed.id, dict(parsed.data or {})) == (
        "rabbitry.sessions.User",
        7,
        {"tenant": "acme", "username": "bob"},
    )
