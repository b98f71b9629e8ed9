"""The datagram parser and the stream framer: RFC 3261 examples, framing rules, limits, keep-alives.

Stream samples are fed three ways (h11 style): whole, one byte at a time, and followed by
trailing bytes that must stay buffered.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sip.errors import LocalProtocolError, SipParseError
from sip.message import Request, Response, error_response
from sip.parser import (
    BadMessage,
    KeepAlive,
    Limits,
    StreamEvent,
    StreamParser,
    parse_datagram_untrusted,
)
from sip.uri import SipUri

# RFC 3261 §24.2, message F1 (INVITE Alice -> atlanta.com proxy), with its SDP body.
SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 pc33.atlanta.com\r\ns=Session SDP\r\n"
    b"c=IN IP4 pc33.atlanta.com\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
F1 = (
    b"INVITE sip:bob@biloxi.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.com>\r\n"
    b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.com>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n\r\n" % len(SDP)
) + SDP
# RFC 3261 §24.2 F9: 200 OK forwarded by two proxies (three Vias, two Record-Routes).
F9 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP server10.biloxi.com;branch=z9hG4bK4b43c2ff8.1;received=192.0.2.3\r\n"
    b"Via: SIP/2.0/UDP bigbox3.site3.atlanta.com;branch=z9hG4bK77ef4c2312983.1;received=192.0.2.2\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8;received=192.0.2.1\r\n"
    b"Record-Route: <sip:server10.biloxi.com;lr>, <sip:bigbox3.site3.atlanta.com;lr>\r\n"
    b"To: Bob <sip:bob@biloxi.com>;tag=a6c85cf\r\n"
    b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.4>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 0\r\n\r\n"
)
REGISTER_401 = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5090;rport=5090;branch=z9hG4bKabc;received=127.0.0.1\r\n"
    b"From: <sip:100@127.0.0.1>;tag=a1\r\nTo: <sip:100@127.0.0.1>;tag=b2\r\n"
    b"Call-ID: reg1\r\nCSeq: 1 REGISTER\r\n"
    b'WWW-Authenticate: Digest realm="127.0.0.1", nonce="Y2xhc3M=", qop="auth,auth-int"\r\n'
    b"Content-Length: 0\r\n\r\n"
)


def test_rfc3261_f1_invite() -> None:
    msg = parse_datagram_untrusted(F1)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri == SipUri("biloxi.com", "bob")
    assert msg.top_via.branch == "z9hG4bKnashds8"
    assert msg.max_forwards == 70
    assert msg.from_.tag == "1928301774"
    assert msg.to.tag is None
    assert msg.to.display_name == "Bob"
    assert msg.call_id == "a84b4c76e66710"
    assert msg.cseq.seq == 314159
    assert msg.body == SDP
    assert msg.content_length == len(SDP)
    assert "Content-Length" not in msg.headers  # framing only
    assert parse_datagram_untrusted(bytes(msg)) == msg


def test_rfc3261_f9_response_with_record_route() -> None:
    msg = parse_datagram_untrusted(F9)
    assert isinstance(msg, Response)
    assert msg.status == 200
    assert msg.reason == "OK"
    assert [v.received for v in msg.vias] == ["192.0.2.3", "192.0.2.2", "192.0.2.1"]
    assert [str(r.uri) for r in msg.record_route] == [
        "sip:server10.biloxi.com;lr",
        "sip:bigbox3.site3.atlanta.com;lr",
    ]
    assert msg.to.tag == "a6c85cf"
    assert parse_datagram_untrusted(bytes(msg)) == msg


def test_auth_header_with_quoted_comma_is_not_split() -> None:
    msg = parse_datagram_untrusted(REGISTER_401)
    assert isinstance(msg, Response)
    assert msg.headers.get_all("WWW-Authenticate") == [
        'Digest realm="127.0.0.1", nonce="Y2xhc3M=", qop="auth,auth-int"'
    ]


def test_datagram_content_length_rules_rfc3261_18_3() -> None:
    no_length = F1.replace(b"Content-Length: %d\r\n" % len(SDP), b"")
    msg = parse_datagram_untrusted(no_length)
    assert isinstance(msg, Request)
    assert msg.body == SDP
    shorter = F1.replace(b"Content-Length: %d" % len(SDP), b"Content-Length: 4")
    msg = parse_datagram_untrusted(shorter)
    assert isinstance(msg, Request)
    assert msg.body == b"v=0\r"
    with pytest.raises(SipParseError, match="Content-Length 999 exceeds the 156 bytes after the headers"):
        parse_datagram_untrusted(F1.replace(b"Content-Length: %d" % len(SDP), b"Content-Length: 999"))


def test_bare_lf_and_leading_crlf_and_hcolon_space() -> None:
    lf = (
        b"\r\n"
        + F1.split(b"\r\n\r\n")[0].replace(b"\r\n", b"\n").replace(b"Call-ID:", b"Call-ID  :")
        + b"\n\n"
        + SDP
    )
    msg = parse_datagram_untrusted(lf)
    assert isinstance(msg, Request)
    assert msg.call_id == "a84b4c76e66710"
    assert msg.body == SDP


def test_invalid_utf8_survives_a_round_trip() -> None:
    data = F1.replace(b"From: Alice", b'From: "Al\xff\xfeice"')
    msg = parse_datagram_untrusted(data)
    assert isinstance(msg, Request)
    assert msg.from_.display_name == "Al\udcff\udcfeice"
    assert b'"Al\xff\xfeice"' in bytes(msg)


def test_keepalives_in_datagrams() -> None:
    assert parse_datagram_untrusted(b"\r\n\r\n") == KeepAlive(ping=True)
    assert parse_datagram_untrusted(b"\r\n") == KeepAlive(ping=False)
    with pytest.raises(SipParseError, match="empty datagram"):
        parse_datagram_untrusted(b"")


@pytest.mark.parametrize(
    ("data", "message", "status"),
    [
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x", "no empty line after the headers", 400),
        (b"garbage\r\n\r\n", "malformed Request-Line", 400),
        (b"SIP/2.0 99 Low\r\n\r\n", "invalid status code '99'", 400),
        (b"SIP/3.0 200 OK\r\n\r\n", "unsupported SIP version 'SIP/3.0'", 505),
        (
            F1.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"),
            "header line without colon: 'Max-Forwards 70'",
            400,
        ),
        (F1.replace(b"Max-Forwards:", b"Max Forwards:"), "invalid header name 'Max Forwards'", 400),
        (b"INVITE sip:a@b SIP/2.0\r\n folded\r\n\r\n", "continuation line before the first header", 400),
        (F1.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\r0"), "bare CR inside a header line", 400),
        (
            F1.replace(b"Via: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8\r\n", b""),
            "missing Via header",
            400,
        ),
        (F1.replace(b"To: Bob <sip:bob@biloxi.com>\r\n", b""), "missing To header", 400),
        (F1.replace(b"Call-ID: a84b4c76e66710", b"Call-ID: a b"), "invalid Call-ID 'a b'", 400),
        (F1.replace(b"INVITE sip:bob", b"INV;TE sip:bob"), "invalid method", 400),
        (F1.replace(b"Content-Type: application/sdp", b"Content-Type: sdp"), "malformed Content-Type", 400),
        (
            F1.replace(b"Contact: <sip:alice@pc33.atlanta.com>", b"Contact: *, <sip:a@b>"),
            "Contact: * combined",
            400,
        ),
        (
            F1.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nRecord-Route: <sip:p1>, ,<sip:p2>"),
            "empty element in Record-Route",
            400,
        ),
        (F1.replace(b"Max-Forwards: 70", b"X: " + b"a" * 9000), "header line longer than 8192 bytes", 513),
        (F1.replace(b"Max-Forwards: 70", b"X: 1\r\n" * 101), "more than 100 header fields", 513),
        (F1 + b"x" * 70000, f"datagram of {len(F1) + 70000} bytes exceeds 65536", 513),
    ],
)
def test_datagram_errors(data: bytes, message: str, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_datagram_untrusted(data)
    assert message in str(info.value)
    assert info.value.status_hint == status


def test_error_response_needs_a_readable_head() -> None:
    with pytest.raises(SipParseError) as info:
        parse_datagram_untrusted(b"garbage\r\n\r\n")
    assert error_response(info.value) is None  # no Via: nowhere to answer
    with pytest.raises(SipParseError) as info:
        parse_datagram_untrusted(F1.replace(b"Max-Forwards:", b"Max Forwards:"))
    assert info.value.head is None
    assert error_response(info.value) is None
    with pytest.raises(SipParseError) as info:
        parse_datagram_untrusted(
            F1.replace(b"INVITE", b"ACK", 1).replace(b"CSeq: 314159 INVITE", b"CSeq: x ACK")
        )
    assert info.value.head is not None
    assert error_response(info.value) is None
    with pytest.raises(SipParseError) as info:
        parse_datagram_untrusted(F9.replace(b"CSeq: 314159 INVITE", b"CSeq: x"))
    assert info.value.head is None  # responses are never answered
    with pytest.raises(SipParseError) as info:
        parse_datagram_untrusted(F1.replace(b"SIP/2.0/UDP pc33", b"SIP/2.0 pc33"))
    assert info.value.head is not None
    assert error_response(info.value) is None  # the top Via is unusable: nowhere to answer


# --- stream framing ------------------------------------------------------------------------------


def _feed(data: bytes, mode: str) -> tuple[list[StreamEvent], StreamParser]:
    parser = StreamParser()
    events: list[StreamEvent] = []
    chunks: Iterator[bytes]
    if mode == "whole":
        chunks = iter([data])
    elif mode == "bytewise":
        chunks = (data[i : i + 1] for i in range(len(data)))
    else:
        chunks = iter([data[:7], data[7:100], data[100:]])
    for chunk in chunks:
        parser.feed(chunk)
        events.extend(parser.events())
    return events, parser


MODES = ["whole", "bytewise", "chunks"]


@pytest.mark.parametrize("mode", MODES)
def test_stream_several_messages_and_trailing_bytes(mode: str) -> None:
    trailing = b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n"
    events, parser = _feed(F1 + F9 + b"\r\n\r\n" + F1 + trailing, mode)
    if mode == "bytewise":  # the first CRLF of the split ping is reported as a pong at once
        assert events.pop(2) == KeepAlive(ping=False)
    assert [type(e).__name__ for e in events] == ["Request", "Response", "KeepAlive", "Request"]
    assert events[0] == parse_datagram_untrusted(F1)
    assert events[1] == parse_datagram_untrusted(F9)
    assert events[2] == KeepAlive(ping=True)
    assert parser.buffered == len(trailing)
    parser.feed(
        b"Call-ID: 1\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )
    (opt,) = parser.events()
    assert isinstance(opt, Request)
    assert opt.body == b"hi"
    assert parser.buffered == 0


@pytest.mark.parametrize("mode", MODES)
def test_stream_pong_and_leading_crlf(mode: str) -> None:
    events, parser = _feed(b"\r\n" + F9 + b"\n" + F9, mode)
    assert events[0] == KeepAlive(ping=False)
    assert [type(e).__name__ for e in events[1:]] == ["Response", "Response"]
    assert parser.buffered == 0


def test_stream_partial_ping_waits() -> None:
    parser = StreamParser()
    parser.feed(b"\r\n\r")
    assert parser.next_event() is None
    parser.feed(b"\n")
    assert parser.next_event() == KeepAlive(ping=True)
    parser.feed(b"\r")
    assert parser.next_event() is None
    parser.feed(b"\r\n")  # "\r\r\n": the lone CR is ignored, then a pong
    assert parser.events() == [KeepAlive(ping=False)]
    parser.feed(b"\r\n")  # completes a ping split across reads
    assert parser.events() == [KeepAlive(ping=True)]
    parser.feed(b"\r\n")
    assert parser.events() == [KeepAlive(ping=False)]


@pytest.mark.parametrize("mode", MODES)
def test_stream_bad_message_is_reported_and_skipped(mode: str) -> None:
    bad = F1.replace(b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE")
    events, _parser = _feed(bad + F9, mode)
    assert isinstance(events[0], BadMessage)
    assert not events[0].fatal
    assert "CSeq method 'BYE' does not match 'INVITE'" in str(events[0].error)
    answer = error_response(events[0].error, to_tag="t1")
    assert answer is not None
    assert answer.status == 400
    assert answer.cseq.method == "BYE"
    assert events[1] == parse_datagram_untrusted(F9)


@pytest.mark.parametrize("mode", MODES)
def test_stream_unreadable_head_skips_its_body(mode: str) -> None:
    bad = F1.replace(b"Max-Forwards:", b"Max Forwards:")
    events, _ = _feed(bad + F9, mode)
    assert isinstance(events[0], BadMessage)
    assert "invalid header name" in str(events[0].error)
    assert events[1] == parse_datagram_untrusted(F9)


def test_stream_missing_content_length_is_an_error_but_not_fatal() -> None:
    parser = StreamParser()
    parser.feed(F9.replace(b"Content-Length: 0\r\n", b"") + F9)
    first, second = parser.events()
    assert isinstance(first, BadMessage)
    assert "missing Content-Length on a stream" in str(first.error)
    assert isinstance(second, Response)


@pytest.mark.parametrize(
    ("data", "message", "status"),
    [
        (
            F9.replace(b"Content-Length: 0", b"Content-Length: x"),
            "cannot frame the stream: Content-Length is not a number",
            400,
        ),
        (F9.replace(b"Content-Length: 0", b"Content-Length: 70000"), "message exceeds 65536 bytes", 513),
        (b"INVITE sip:a@b SIP/2.0\r\nX: " + b"y" * 70000, "headers exceed 65536 bytes", 513),
    ],
)
def test_stream_fatal_errors(data: bytes, message: str, status: int) -> None:
    parser = StreamParser()
    parser.feed(data)
    (event,) = parser.events()
    assert isinstance(event, BadMessage)
    assert event.fatal
    assert message in str(event.error)
    assert event.error.status_hint == status
    assert parser.broken
    assert parser.next_event() is None
    with pytest.raises(LocalProtocolError):
        parser.feed(b"more")


def test_stream_small_limits() -> None:
    parser = StreamParser(Limits(max_message_size=200, max_headers=5, max_line_length=100))
    parser.feed(F1)
    (event,) = parser.events()
    assert isinstance(event, BadMessage)
    assert event.error.status_hint == 513


def test_stream_search_resumes_instead_of_rescanning() -> None:
    """Feeding a large head in small pieces only scans new bytes (checked by the search position)."""
    parser = StreamParser()
    head = F1.split(b"\r\n\r\n")[0]
    for i in range(0, len(head), 10):
        parser.feed(head[i : i + 10])
        assert parser.next_event() is None
    assert parser._searched == len(head)
    parser.feed(b"\r\n\r\n" + SDP)
    assert isinstance(parser.next_event(), Request)


def test_uri_cache_gives_equal_values_and_never_caches_an_error() -> None:
    # parse_uri keeps recent results (the same URIs come in every call): a cached answer equals a
    # fresh parse, a bad URI raises every time, and a long one is parsed without the cache.
    from sip.uri import URI_CACHE_MAX_LENGTH, parse_uri

    text = "sip:200@127.0.0.1:5072;transport=udp"
    assert parse_uri(text) == parse_uri(text) == SipUri("127.0.0.1", "200", 5072, parse_uri(text).params)
    for _ in range(2):
        with pytest.raises(SipParseError, match="invalid host"):
            parse_uri("sip:200@bad host")
    long_user = "u" * URI_CACHE_MAX_LENGTH
    uri = parse_uri(f"sip:{long_user}@example.com")
    assert isinstance(uri, SipUri)
    assert uri.user == long_user


def test_header_names_in_any_usual_spelling_are_canonical() -> None:
    data = (
        b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\nMAX-FORWARDS: 70\r\n"
        b"F: <sip:x@y>;tag=1\r\nto: <sip:a@b>\r\nI: c1\r\ncseq: 1 OPTIONS\r\nX-Odd_Name: 1\r\n\r\n"
    )
    msg = parse_datagram_untrusted(data)
    assert isinstance(msg, Request)
    names = [name for name, _ in msg.headers]
    assert names == ["Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq", "X-Odd_Name"]
    with pytest.raises(SipParseError, match="invalid header name"):
        parse_datagram_untrusted(data.replace(b"X-Odd_Name", b"X Odd"))
