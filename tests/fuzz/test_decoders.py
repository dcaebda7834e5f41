"""Property tests (Hypothesis) of everything that reads bytes or text from outside: the AMQP
frame splitter, content headers and field tables, the envelope (a Message from any headers and
body), the name validators, the requeue date arguments, the keyset page cursors, the chat's
client frames. Each raises nothing but its documented error type, whatever the input, and what
it accepts is what the next layer accepts too (docs/security.md).

Seeded (``derandomize``) and bounded (``max_examples``): the same cases on every run, in a few
seconds. No network."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rabbitry.amqp.fieldtable import decode_table, encode_table
from rabbitry.amqp.wire import FrameError, parse_content_header, salvage_content_header
from rabbitry.amqp.wire import split_frames as split
from rabbitry.chat.protocol import FrameError as ChatFrameError
from rabbitry.chat.protocol import check_id, check_room, parse_client_frame
from rabbitry.chat.topology import ChatLayout
from rabbitry.errors import MessageError
from rabbitry.events.change import parse_time
from rabbitry.messaging.deadletters import dead_letter_queue
from rabbitry.messaging.envelope import Message, decode
from rabbitry.messaging.settings import validate_name
from rabbitry.messaging.topology import check_name, check_routing_key
from rabbitry.outbox.filters import FilterError, parse_filter
from rabbitry.outbox.message import PageKey
from rabbitry.sessions.tenants import check_tenant
from rabbitry.sessions.tokens import new_token, token_tenant
from rabbitry.sessions.topology import TenantsLayout
from rabbitry.storage.listing import int64

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,  # no .hypothesis/ directory: derandomized runs need no example store
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Field-table values as RabbitMQ and RoadRunner send them, nested.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1)).map(
        lambda d: d.replace(microsecond=0, tzinfo=dt.UTC)
    ),
)
_names = st.text(min_size=1, max_size=20)  # no surrogates: at most 80 bytes of UTF-8
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_names, inner, max_size=4)
    ),
    max_leaves=8,
)
# The nested strategies cost most to draw: fewer cases, still every shape.
FUZZ_NESTED = settings(FUZZ, max_examples=100)
_tables = st.dictionaries(_names, _values, max_size=6)


@FUZZ
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=4096))
def test_the_frame_splitter_raises_only_frame_error_on_any_bytes(
    data: bytes, frame_max: int
) -> None:
    buffer = bytearray(data)
    try:
        frames = split(buffer, frame_max)
    except FrameError:
        return
    consumed = sum(8 + len(payload) for _, _, payload in frames)
    assert consumed + len(buffer) == len(data)  # nothing invented, nothing lost


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from([1, 2, 3, 8]), st.integers(0, 65535), st.binary(max_size=80)),
        max_size=5,
    ),
    st.integers(1, 40),
)
def test_well_formed_frames_come_out_whole_however_the_bytes_are_cut(
    frames: list[tuple[int, int, bytes]], cut: int
) -> None:
    wire = b"".join(
        struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"
        for kind, channel, payload in frames
    )
    buffer = bytearray()
    found = []
    for start in range(0, len(wire), cut):
        buffer += wire[start : start + cut]
        found += split(buffer)
    assert found == frames and not buffer


@FUZZ_NESTED
@given(_tables)
def test_a_field_table_decodes_to_what_was_encoded(table: dict[str, Any]) -> None:
    decoded = decode_table(encode_table(table))
    assert set(decoded) == set(table)


@FUZZ
@given(st.binary(max_size=300))
def test_a_field_table_decoder_raises_only_value_error_on_any_bytes(data: bytes) -> None:
    framed = struct.pack(">I", len(data)) + data
    for raw in (data, framed):
        with contextlib.suppress(ValueError):
            decode_table(raw)


@FUZZ
@given(st.binary(min_size=0, max_size=300))
def test_a_content_header_decodes_or_is_salvaged_or_is_a_frame_error(data: bytes) -> None:
    try:
        parse_content_header(data)
        return
    except (ValueError, OverflowError, OSError, IndexError, struct.error):
        pass  # the documented failures of the fast decoder: the link salvages then
    with contextlib.suppress(FrameError):
        salvage_content_header(data)


@FUZZ_NESTED
@given(
    st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    st.dictionaries(st.text(max_size=20), _values, max_size=6)
    | st.fixed_dictionaries({"rr_job": _values}, optional={"rr_id": _values, "rr_delay": _values}),
    st.booleans(),
)
def test_a_message_from_any_headers_and_body_or_a_message_error(
    body: bytes, headers: dict[str, Any], strict: bool
) -> None:
    try:
        message = decode(body, headers, strict=strict)
    except MessageError:
        return
    assert isinstance(message, Message)
    assert isinstance(message.type, str) and isinstance(message.id, str)


_any_name = st.text(max_size=80) | st.from_regex(r"[A-Za-z0-9_.:-]{0,70}", fullmatch=True)


@FUZZ
@given(_any_name)
def test_name_validators_raise_only_value_error_and_agree_with_the_broker_names(
    name: str,
) -> None:
    for check in (
        validate_name,
        check_tenant,
        check_name,
        check_routing_key,
        check_room,
        check_id,
        dead_letter_queue,
    ):
        with contextlib.suppress(ValueError):
            check(name)
    try:
        check_tenant(name)
    except ValueError:
        return
    # A valid tenant makes valid broker names, tokens and room keys: nothing refuses it later.
    layout = TenantsLayout("ns")
    check_name(layout.tenant_queue(name))
    check_routing_key(layout.tenant_routing_key(name))
    assert token_tenant(new_token(name)) == name
    ChatLayout("ns").room_key(name, "lobby")


_dates = st.one_of(
    st.text(max_size=30),
    st.datetimes(
        min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)
    ).map(lambda d: d.strftime("%Y-%m-%d %H:%M:%S")),
    st.sampled_from(["", "''", '""', " ", "0001-01-01 00:00:00", "9999-12-31 23:59:59"]),
    st.none(),
)


@FUZZ
@given(st.none() | st.text(max_size=300), _dates, _dates)
def test_requeue_arguments_make_a_filter_or_a_filter_error(
    queue: str | None, date_from: str | None, date_to: str | None
) -> None:
    try:
        where = parse_filter(queue, date_from, date_to)
    except FilterError:
        return
    if where.since is not None and where.before is not None:
        assert where.since < where.before


@FUZZ
@given(st.text(max_size=40) | _dates.filter(lambda d: d is not None))
def test_event_times_parse_or_raise_value_error(text: str | None) -> None:
    assert text is not None
    try:
        when = parse_time(text)
    except ValueError:
        return
    assert when.tzinfo is not None


_tokens = st.one_of(
    st.text(max_size=70),
    st.from_regex(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}_[0-9]{1,40}", fullmatch=True),
    st.builds(
        lambda when, row: PageKey(when, row).token(),
        st.datetimes(min_value=dt.datetime(1970, 1, 2), timezones=st.just(dt.UTC)),
        st.integers(min_value=0, max_value=2**63 - 1),
    ),
)


@FUZZ
@given(_tokens)
def test_a_page_cursor_round_trips_or_is_a_value_error_and_its_id_fits_a_bigint(
    token: str,
) -> None:
    try:
        key = PageKey.parse(token)
    except ValueError:
        return
    assert 0 <= key.id <= 2**63 - 1
    assert PageKey.parse(key.token()) == key


@FUZZ
@given(st.text(max_size=30) | st.integers().map(str))
def test_back_office_ids_are_int64_or_none(text: str) -> None:
    value = int64(text)
    assert value is None or -(2**63) <= value <= 2**63 - 1


_frames = st.one_of(
    st.text(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=10,
    ).map(json.dumps),
    st.integers(min_value=1, max_value=5000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=1, max_value=2000).map(lambda n: '{"text":' * n + '"x"' + "}" * n),
)


@FUZZ
@given(_frames)
def test_a_client_frame_is_text_or_a_frame_error(raw: str) -> None:
    try:
        text = parse_client_frame(raw)
    except ChatFrameError:
        return
    assert isinstance(text, str) and text.strip()
