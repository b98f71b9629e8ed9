"""The MCCP codec on strings: every message round-trips, every bad input gets a precise ParseError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mccp.codec import decode_bridge_untrusted, decode_untrusted, encode
from mccp.errors import ErrorCode, ParseError, RemoteProtocolError
from mccp.limits import MAX_DIGITS, MAX_NUMBER_CHARS, MAX_PASSWORD_CHARS, MAX_SDP_CHARS
from mccp.messages import (
    Answer,
    Call,
    Dtmf,
    ErrorReply,
    Hangup,
    HangupRequest,
    Ping,
    Pong,
    Progress,
    Ringing,
    Trying,
)

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"


def call_obj(**over: object) -> dict[str, object]:
    obj: dict[str, object] = {"type": "call", "clr": "100", "pwd": "secret", "cld": "101", "sdp": SDP}
    obj.update(over)
    return obj


def bad(text: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        decode_untrusted(text)
    return info.value


# ------------------------------------------------------------------ good input


def test_decode_call() -> None:
    msg = decode_untrusted(json.dumps(call_obj()))
    assert msg == Call(clr="100", pwd="secret", cld="101", sdp=SDP)


def test_call_repr_hides_password() -> None:
    assert "secret" not in repr(Call(clr="100", pwd="secret", cld="101", sdp=SDP))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"type":"dtmf","digits":"0123456789*#ABCD"}', Dtmf("0123456789*#ABCD")),
        ('{"type":"hangup"}', HangupRequest()),
        ('{"type":"ping"}', Ping()),
        ('{"type":"ping","v":1}', Ping()),
        ('{"type":"ping","future":"ignored"}', Ping()),
        ('  {"type" : "ping"}\n', Ping()),
    ],
)
def test_decode_simple(text: str, expected: object) -> None:
    assert decode_untrusted(text) == expected


PAGE = [Call("+49301234", "p w", "*97#", SDP), Dtmf("1"), HangupRequest(), Ping()]
BRIDGE = [
    Trying(),
    Ringing(),
    Progress(SDP),
    Answer(SDP),
    Hangup(486, "Busy Here"),
    ErrorReply(400, "x"),
    Pong(),
]


@pytest.mark.parametrize("msg", PAGE, ids=lambda m: m.TYPE)
def test_page_roundtrip(msg: object) -> None:
    assert isinstance(msg, Call | Dtmf | HangupRequest | Ping)
    assert decode_untrusted(encode(msg)) == msg


@pytest.mark.parametrize("msg", BRIDGE, ids=lambda m: m.TYPE)
def test_bridge_roundtrip(msg: object) -> None:
    assert isinstance(msg, Trying | Ringing | Progress | Answer | Hangup | ErrorReply | Pong)
    assert decode_bridge_untrusted(encode(msg)) == msg


def test_encode_is_compact_json_with_type_first() -> None:
    assert encode(Hangup(403, "Forbidden")) == '{"type":"hangup","code":403,"reason":"Forbidden"}'
    assert encode(Pong()) == '{"type":"pong"}'


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("text", "code", "reason"),
    [
        ("", 400, "invalid JSON"),
        ("{", 400, "invalid JSON"),
        ("{'type':'ping'}", 400, "invalid JSON"),
        ('{"type":"ping"} x', 400, "invalid JSON"),
        ("[" * 60000, 400, "invalid JSON"),
        ("[" * 5000 + "]" * 5000, 400, "invalid JSON: nested too deeply"),
        ("1" * 5000, 400, "invalid JSON"),
        ("NaN", 400, "must be a JSON object, got number"),
        ("[]", 400, "must be a JSON object, got array"),
        ('"ping"', 400, "must be a JSON object, got string"),
        ("null", 400, "must be a JSON object, got null"),
        ("true", 400, "must be a JSON object, got boolean"),
        ("{}", 400, "missing field 'type'"),
        ('{"type":1}', 400, "field 'type' must be a string, got number"),
        ('{"type":null}', 400, "field 'type' must be a string, got null"),
        ('{"type":"dial"}', 400, "unknown message type 'dial'"),
        ('{"type":"answer","sdp":"v=0"}', 400, "unknown message type 'answer'"),
        ('{"type":"ping","v":2}', 505, "protocol version 2 not supported"),
        ('{"type":"ping","v":"1"}', 400, "field 'v' must be an integer, got string"),
        ('{"type":"ping","v":true}', 400, "field 'v' must be an integer, got boolean"),
        ('{"type":"dtmf"}', 400, "'dtmf' is missing field 'digits'"),
        ('{"type":"dtmf","digits":5}', 400, "field 'digits' of 'dtmf' must be a string, got number"),
        ('{"type":"dtmf","digits":""}', 400, "field 'digits' is empty"),
        ('{"type":"dtmf","digits":"12e"}', 400, "may hold only 0-9 * # A B C D"),
        ('{"type":"dtmf","digits":"1 2"}', 400, "may hold only 0-9 * # A B C D"),
        ('{"type":"dtmf","digits":"a"}', 400, "may hold only 0-9 * # A B C D"),
        ('{"type":"dtmf","digits":"' + "1" * (MAX_DIGITS + 1) + '"}', 413, "over 32"),
    ],
)
def test_bad_input(text: str, code: int, reason: str) -> None:
    err = bad(text)
    assert err.code == code
    assert reason in err.reason
    assert isinstance(err, ValueError)
    assert isinstance(err, RemoteProtocolError)


@pytest.mark.parametrize("field", ["clr", "pwd", "cld", "sdp"])
def test_call_missing_field(field: str) -> None:
    obj = call_obj()
    del obj[field]
    err = bad(json.dumps(obj))
    assert (err.code, err.reason) == (400, f"'call' is missing field '{field}'")


@pytest.mark.parametrize("field", ["clr", "pwd", "cld", "sdp"])
@pytest.mark.parametrize(("value", "kind"), [(1, "number"), (None, "null"), ([], "array"), ({}, "object")])
def test_call_wrong_type(field: str, value: object, kind: str) -> None:
    err = bad(json.dumps(call_obj(**{field: value})))
    assert err.code == 400
    assert err.reason == f"field '{field}' of 'call' must be a string, got {kind}"


@pytest.mark.parametrize(
    ("field", "value", "code", "reason"),
    [
        ("clr", "", 400, "field 'clr' is empty"),
        ("clr", "1" * (MAX_NUMBER_CHARS + 1), 413, "field 'clr' is 65 characters, over 64"),
        ("cld", "sip:101@example.com", 400, "field 'cld' may hold only"),
        ("cld", "10 1", 400, "field 'cld' may hold only"),
        ("cld", "10\n1", 400, "field 'cld' may hold only"),
        ("pwd", "", 400, "field 'pwd' is empty"),
        ("pwd", "x" * (MAX_PASSWORD_CHARS + 1), 413, "field 'pwd' is 129 characters"),
        ("pwd", "a\r\nb", 400, "field 'pwd' contains a control character"),
        ("pwd", "\ud800", 400, "field 'pwd' contains a lone surrogate"),
        ("sdp", "", 400, "field 'sdp' is empty"),
        ("sdp", "hello", 400, "field 'sdp' is not an SDP description"),
        ("sdp", "v=0\r\n" + "a" * MAX_SDP_CHARS, 413, "field 'sdp' is"),
    ],
)
def test_call_bad_values(field: str, value: str, code: int, reason: str) -> None:
    err = bad(json.dumps(call_obj(**{field: value})))
    assert err.code == code
    assert reason in err.reason


def test_frame_cap() -> None:
    text = json.dumps(call_obj(sdp="v=0" + " " * 70000))
    err = bad(text)
    assert err.code == ErrorCode.TOO_BIG
    assert "over 65536" in err.reason
    with pytest.raises(ParseError, match="over 100"):
        decode_untrusted('{"type":"ping","pad":"' + "x" * 100 + '"}', max_chars=100)


def test_reason_quotes_untrusted_type_printably() -> None:
    err = bad(json.dumps({"type": "\x00\n" + "z" * 100}))
    assert "\n" not in err.reason
    assert "\x00" not in err.reason
    assert err.reason.endswith("...'")
    ErrorReply(err.code, err.reason)  # a reason we generate is always a valid reply


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"type":"hangup","code":"486","reason":"x"}', "field 'code' of 'hangup' must be an integer"),
        ('{"type":"hangup","code":486.0,"reason":"x"}', "must be an integer, got number"),
        ('{"type":"hangup","code":99,"reason":"x"}', "field 'code' is 99, not in 100-699"),
        ('{"type":"error","code":400}', "'error' is missing field 'reason'"),
        ('{"type":"answer"}', "'answer' is missing field 'sdp'"),
        ('{"type":"call"}', "unknown message type 'call'"),
    ],
)
def test_bridge_decoder_bad_input(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        decode_bridge_untrusted(text)
    assert reason in info.value.reason


def test_constructors_validate() -> None:
    with pytest.raises(ParseError, match="not in 100-699"):
        Hangup(700, "x")
    with pytest.raises(ParseError, match="control character"):
        ErrorReply(400, "a\nb")
    with pytest.raises(ParseError, match="not an SDP"):
        Answer("m=audio")


# ------------------------------------------------------------------ fuzz: only ParseError escapes


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_parse_error(text: str) -> None:
    try:
        decode_untrusted(text)
    except ParseError as err:
        ErrorReply(err.code, err.reason)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["call", "dtmf", "hangup", "ping", "pong", "x"]),
    st.dictionaries(st.sampled_from(["clr", "pwd", "cld", "sdp", "digits", "v", "code"]), _json),
)
def test_arbitrary_objects_raise_only_parse_error(kind: str, fields: dict[str, object]) -> None:
    text = json.dumps({"type": kind, **fields})
    for decoder in (decode_untrusted, decode_bridge_untrusted):
        try:
            decoder(text)
        except ParseError as err:
            ErrorReply(err.code, err.reason)
