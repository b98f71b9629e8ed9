"""Property tests: values built from random parts serialize and parse back equal.

URIs, name-addrs (display names with quotes, backslashes, commas and any Unicode), Vias and whole
requests/responses built with the builders. Hypothesis: 200 examples each (100 for whole
messages), derandomized.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.errors import LocalProtocolError
from sip.headers import NameAddr, Via, parse_name_addr, parse_via
from sip.message import Request, Response, make_request, make_response
from sip.parser import StreamParser, parse_datagram_untrusted
from sip.uri import Params, SipUri, parse_uri

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
TOKEN = st.text(ALNUM + "-.!%*_+`'~", min_size=1, max_size=10)
PARAMCHARS = st.text(ALNUM + "-_.!~*'()%[]/:&+$", min_size=1, max_size=10)
HOSTNAME = st.from_regex(r"[a-z0-9]([a-z0-9.\-]{0,10}[a-z0-9])?", fullmatch=True)
HOST = st.one_of(
    HOSTNAME,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
PORT = st.one_of(st.none(), st.integers(0, 65535))


@st.composite
def sip_uris(draw: st.DrawFn) -> SipUri:
    user = draw(st.one_of(st.none(), st.text(ALNUM + "-_.!~*'()%&=+$,;?/", min_size=1, max_size=12)))
    password = draw(st.one_of(st.none(), st.text(ALNUM + "-_.!~*'()%&=+$,", max_size=8))) if user else None
    params = draw(st.lists(st.tuples(PARAMCHARS, st.one_of(st.none(), PARAMCHARS)), max_size=3))
    hchars = ALNUM + "-_.!~*'()%[]/?:+$"
    header = st.tuples(st.text(hchars, min_size=1, max_size=8), st.text(hchars, max_size=8))
    headers = draw(st.lists(header, max_size=2))
    return SipUri(
        draw(HOST),
        user,
        draw(PORT),
        Params(tuple(params)),
        tuple(headers),
        password,
        draw(st.sampled_from(["sip", "sips"])),
    )


HEADER_PARAMS = st.lists(
    st.tuples(TOKEN.filter(lambda n: n.lower() != "rport"), st.one_of(st.none(), TOKEN)), max_size=3
).map(lambda items: Params(tuple(items)))
DISPLAY = st.one_of(st.none(), st.text(max_size=20).filter(lambda t: "\r" not in t and "\n" not in t))


@st.composite
def name_addrs(draw: st.DrawFn) -> NameAddr:
    return NameAddr(draw(sip_uris()), draw(DISPLAY), draw(HEADER_PARAMS))


@st.composite
def vias(draw: st.DrawFn) -> Via:
    params = draw(HEADER_PARAMS).set("branch", "z9hG4bK" + draw(TOKEN))
    if draw(st.booleans()):
        params = params.set("rport", draw(st.one_of(st.none(), st.integers(1, 65535).map(str))))
    transport = draw(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]))
    return Via(transport, draw(HOST), draw(PORT), params)


@SETTINGS
@given(sip_uris())
def test_uri_round_trip(uri: SipUri) -> None:
    assert parse_uri(str(uri)) == uri


@SETTINGS
@given(name_addrs())
def test_name_addr_round_trip(addr: NameAddr) -> None:
    assert parse_name_addr(str(addr), "To") == addr


@SETTINGS
@given(vias())
def test_via_round_trip(via: Via) -> None:
    assert parse_via(str(via)) == via


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    method=TOKEN,
    uri=sip_uris().map(lambda u: u.without_headers()),
    from_=name_addrs(),
    to=name_addrs(),
    via=st.lists(vias(), min_size=1, max_size=3),
    routes=st.lists(name_addrs(), max_size=2),
    cseq=st.integers(0, 2**31 - 1),
    body=st.binary(max_size=200),
    status=st.integers(100, 699),
    reason=st.text(max_size=20).filter(lambda t: "\r" not in t and "\n" not in t),
)
def test_message_round_trip(
    method: str,
    uri: SipUri,
    from_: NameAddr,
    to: NameAddr,
    via: list[Via],
    routes: list[NameAddr],
    cseq: int,
    body: bytes,
    status: int,
    reason: str,
) -> None:
    request = make_request(
        method, uri, call_id="c1@h", cseq=cseq, from_=from_, to=to, via=via, route=routes, body=body
    )
    data = bytes(request)
    assert parse_datagram_untrusted(data) == request
    response = make_response(request, status, reason or None, to_tag="t1", body=body)
    assert parse_datagram_untrusted(bytes(response)) == response
    stream = StreamParser()
    stream.feed(data + bytes(response))
    assert stream.events() == [request, response]


def test_no_header_injection_through_values() -> None:
    uri = SipUri("example.com", "bob")
    evil = NameAddr(uri, 'Eve\r\nX-Injected: 1"')
    request = make_request(
        "OPTIONS", uri, call_id="c", cseq=1, from_=evil, to=NameAddr(uri), via=Via("UDP", "h")
    )
    parsed = parse_datagram_untrusted(bytes(request))
    assert isinstance(parsed, Request)
    assert "X-Injected" not in parsed.headers
    assert parsed.from_.display_name == 'Eve  X-Injected: 1"'
    with pytest.raises(LocalProtocolError, match="CR or LF"):
        bytes(
            make_request(
                "OPTIONS", uri, call_id="c\r\nX: y", cseq=1, from_=evil, to=evil, via=Via("UDP", "h")
            )
        )
    with pytest.raises(LocalProtocolError, match="CR or LF"):
        bytes(Response(200, "OK\r\nX: y", request.headers))
