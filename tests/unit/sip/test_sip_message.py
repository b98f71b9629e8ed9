"""URIs, header values, the Headers multi-map, builders and the serializer."""

from __future__ import annotations

import pytest

from sip.errors import SipParseError
from sip.headers import (
    ContentType,
    CSeq,
    Headers,
    NameAddr,
    Via,
    canonical_name,
    parse_cseq,
    parse_name_addr,
    parse_via,
    split_list,
)
from sip.message import Request, Response, make_request, make_response, reason_phrase
from sip.parser import parse_datagram_untrusted
from sip.uri import AbsoluteUri, Params, SipUri, parse_sip_uri, parse_uri, unescape


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:alice@atlanta.com", SipUri("atlanta.com", "alice")),
        ("SIP:alice@atlanta.com:5061", SipUri("atlanta.com", "alice", 5061)),
        (
            "sips:bob@[2001:db8::1]:5061;transport=tls",
            SipUri("[2001:db8::1]", "bob", 5061, Params((("transport", "tls"),)), scheme="sips"),
        ),
        ("sip:[::1]", SipUri("[::1]")),
        (
            "sip:alice:secretword@atlanta.com;transport=tcp",
            SipUri("atlanta.com", "alice", None, Params((("transport", "tcp"),)), password="secretword"),
        ),
        (
            "sip:+1-212-555-1212:1234@gateway.com;user=phone",
            SipUri("gateway.com", "+1-212-555-1212", None, Params((("user", "phone"),)), password="1234"),
        ),
        ("sip:192.0.2.4", SipUri("192.0.2.4")),
        (
            "sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com",
            SipUri(
                "atlanta.com", None, None, Params((("method", "REGISTER"),)), (("to", "alice%40atlanta.com"),)
            ),
        ),
        ("sip:alice;day=tuesday@atlanta.com", SipUri("atlanta.com", "alice;day=tuesday")),
        ("sip:proxy.example.com;lr", SipUri("proxy.example.com", params=Params((("lr", None),)))),
        ("tel:+1-201-555-0123", AbsoluteUri("tel", "+1-201-555-0123")),
    ],
)
def test_uri_examples_rfc3261_19_1_3(text: str, expected: SipUri | AbsoluteUri) -> None:
    uri = parse_uri(text)
    assert uri == expected
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice@atlanta.com", "has no valid scheme"),
        ("sip:", "has no host"),
        ("sip:alice@", "has no host"),
        ("sip:a@b:99999", "invalid port '99999'"),
        ("sip:a@b:x", "invalid port 'x'"),
        ("sip:a@[::1", "unterminated IPv6 reference"),
        ("sip:a@[::1]x", "junk after IPv6 reference"),
        ("sip:a b@c", "invalid user part"),
        ("sip:a@b;=x", "invalid parameter"),
        ("sip:a@b?x", "invalid header"),
        ("sip:a@bad host", "invalid host"),
        ("tel:+1 555", "invalid characters in URI"),
    ],
)
def test_bad_uris(text: str, message: str) -> None:
    with pytest.raises(SipParseError, match=message):
        parse_uri(text)


def test_uri_helpers() -> None:
    uri = parse_sip_uri("sip:bob@[::1]:5062;transport=TCP?subject=x")
    assert uri.transport == "tcp"
    assert uri.host_no_brackets == "::1"
    assert str(uri.without_headers()) == "sip:bob@[::1]:5062;transport=TCP"
    assert str(uri.with_params(uri.params.set("lr").remove("transport"))) == "sip:bob@[::1]:5062;lr?subject=x"
    assert unescape("a%20b%zz%4") == "a b%zz%4"
    with pytest.raises(SipParseError, match="expected a sip: or sips: URI") as info:
        parse_sip_uri("tel:123")
    assert info.value.status_hint == 416


def test_params_are_case_insensitive_and_ordered() -> None:
    p = Params((("Tag", "x"), ("lr", None)))
    assert p.get("tag") == "x"
    assert "LR" in p
    assert p.get("lr") is None
    assert p.get("lr", "d") == "d"
    assert "nope" not in p
    assert 3 not in p
    assert str(p.set("tag", "y").set("new", "1")) == ";Tag=y;lr;new=1"
    assert str(p.remove("TAG")) == ";lr"


def test_canonical_names_and_compact_forms() -> None:
    compact = ["v", "f", "t", "i", "m", "l", "c", "k", "s", "e", "o", "x", "r", "b", "y", "u"]
    assert [canonical_name(n) for n in compact] == [
        "Via", "From", "To", "Call-ID", "Contact", "Content-Length", "Content-Type", "Supported",
        "Subject", "Content-Encoding", "Event", "Session-Expires", "Refer-To", "Referred-By",
        "Identity", "Allow-Events",
    ]  # fmt: skip
    assert canonical_name("call-id") == "Call-ID"
    assert canonical_name("WWW-AUTHENTICATE") == "WWW-Authenticate"
    assert canonical_name("X-Custom") == "X-Custom"


def test_headers_multimap() -> None:
    h = Headers.from_pairs([("v", "a"), ("X-A", "1"), ("Via", "b"), ("x-a", "2")])
    assert h.get("VIA") == "a"
    assert h.get_all("v") == ["a", "b"]
    assert h.get_all("X-a") == ["1", "2"]
    assert "via" in h
    assert "Route" not in h
    assert len(h) == 4
    assert h.replace("Via", ["c"]).items == (("Via", "c"), ("X-A", "1"), ("x-a", "2"))
    assert h.replace("Route", "r").get("Route") == "r"
    assert h.remove("x-a").items == (("Via", "a"), ("Via", "b"))
    assert h.prepend("Via", "z").get("Via") == "z"
    assert h.add("Route", "r").items[-1] == ("Route", "r")
    assert next(iter(h)) == ("Via", "a")


def test_split_list_respects_quotes_and_brackets() -> None:
    assert split_list('"a, b" <sip:x@y;p=1,2>, <sip:z>', "Contact") == ['"a, b" <sip:x@y;p=1,2>', "<sip:z>"]
    assert split_list("a,b , c", "Allow") == ["a", "b", "c"]
    assert split_list('"q\\", x" <sip:a>, b', "Contact") == ['"q\\", x" <sip:a>', "b"]
    with pytest.raises(SipParseError, match="unterminated quoted string in Contact"):
        split_list('"abc, <sip:a>', "Contact")
    with pytest.raises(SipParseError, match=r"unterminated <\.\.\.> in Route"):
        split_list("<sip:a, <sip:b", "Route")


def test_name_addr_forms() -> None:
    a = parse_name_addr('"A \\"q\\" \\\\ b" <sip:a@b>;tag=1;x', "From")
    assert a.display_name == 'A "q" \\ b'
    assert a.tag == "1"
    assert "x" in a.params
    assert parse_name_addr(str(a), "From") == a
    b = parse_name_addr("Bob Smith <sip:bob@b> ; tag = 2", "To")
    assert b.display_name == "Bob Smith"
    assert b.tag == "2"
    c = parse_name_addr("sip:c@d;tag=3", "To")
    assert c.uri == SipUri("d", "c")
    assert c.tag == "3"
    assert c.display_name is None
    assert str(c.with_tag("4")) == "<sip:c@d>;tag=4"
    d = parse_name_addr("<sip:e@f>;expires=60;q=0.5", "Contact")
    assert d.expires == 60
    assert parse_name_addr("<sip:e@f>;expires=x", "Contact").expires is None
    assert parse_name_addr("J\xc3\xbcrgen <sip:j@k>", "From").display_name == "J\xc3\xbcrgen"
    for bad, msg in [
        ("", "empty address"),
        ('"A" sip:a@b', "expected <URI> after the display name"),
        ("<sip:a@b", "unterminated <URI>"),
        ("<sip:a@b> junk", "junk after <URI>"),
        ("<sip:a@b>;", "invalid parameter"),
        ("<sip:a@b>;tag=", "invalid value of parameter 'tag'"),
        ('<sip:a@b>;x="unterminated', "unterminated quoted string"),
        ("<>", "whitespace inside <URI>"),
        ("sip:a@b,c", "URI with ',' must be enclosed"),
    ]:
        with pytest.raises(SipParseError, match=msg):
            parse_name_addr(bad, "To")


def test_via_values() -> None:
    v = parse_via("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK77;received=10.0.0.1;rport=1234")
    assert (v.transport, v.host, v.port, v.branch, v.received, v.rport, v.has_rport) == (
        "UDP", "192.0.2.1", 5060, "z9hG4bK77", "10.0.0.1", 1234, True,
    )  # fmt: skip
    assert v.sent_by == ("192.0.2.1", 5060)
    w = parse_via("SIP/2.0/tcp [2001:db8::9] ; rport ; branch=z9hG4bKx ; received=2001:db8::10")
    assert (w.transport, w.host, w.port, w.rport, w.has_rport, w.received) == (
        "TCP", "[2001:db8::9]", None, None, True, "2001:db8::10",
    )  # fmt: skip
    assert (
        str(w.with_param("rport", "5060"))
        == "SIP/2.0/TCP [2001:db8::9];rport=5060;branch=z9hG4bKx;received=2001:db8::10"
    )
    assert parse_via(str(v)) == v
    for bad, msg in [
        ("SIP/2.0 host", "malformed Via"),
        ("SIP/2.0/UDP", "malformed Via"),
        ("SIP/2.0/UDP host:99999", "invalid port"),
        ("SIP/2.0/UDP host;rport=abc", "invalid port 'abc' in Via rport"),
        ("SIP/2.0/UDP ho*st", "invalid host"),
    ]:
        with pytest.raises(SipParseError, match=msg):
            parse_via(bad)


def test_cseq_and_content_type() -> None:
    assert parse_cseq("  0042 \t ACK ") == CSeq(42, "ACK")
    assert str(CSeq(1, "BYE")) == "1 BYE"
    for bad, msg in [
        ("INVITE", "malformed CSeq"),
        ("2147483648 INVITE", "CSeq number too large"),
        ("1 IN VITE", "malformed"),
    ]:
        with pytest.raises(SipParseError, match=msg):
            parse_cseq(bad)
    assert str(ContentType("application", "sdp")) == "application/sdp"


ALICE = NameAddr(SipUri("atlanta.com", "alice"), "Alice", Params((("tag", "1928301774"),)))
BOB = NameAddr(SipUri("biloxi.com", "bob"), "Bob")
VIA = Via("UDP", "pc33.atlanta.com", None, Params((("branch", "z9hG4bK776asdhds"),)))


def _invite() -> Request:
    return make_request(
        "INVITE",
        SipUri("biloxi.com", "bob"),
        call_id="a84b4c76e66710@pc33.atlanta.com",
        cseq=314159,
        from_=ALICE,
        to=BOB,
        via=VIA,
        contact=NameAddr(SipUri("pc33.atlanta.com", "alice")),
        headers=[("Supported", "replaces")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )


def test_make_request_rfc3261_section_24_2_style() -> None:
    inv = _invite()
    data = bytes(inv)
    assert data.startswith(
        b"INVITE sip:bob@biloxi.com SIP/2.0\r\nVia: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\n"
    )
    assert b"\r\nMax-Forwards: 70\r\n" in data
    assert data.endswith(b"Content-Length: 5\r\n\r\nv=0\r\n")
    again = parse_datagram_untrusted(data)
    assert again == inv
    assert isinstance(again, Request)
    assert again.cseq == CSeq(314159, "INVITE")
    assert again.from_ == ALICE


def test_serializer_always_writes_the_right_content_length() -> None:
    inv = _invite()
    lying = Request(inv.method, inv.uri, inv.headers.add("Content-Length", "999").add("l", "3"), b"abc")
    data = bytes(lying)
    assert data.count(b"Content-Length") == 1
    assert data.endswith(b"Content-Length: 3\r\n\r\nabc")
    bare = Request("OPTIONS", SipUri("x"), Headers(), b"")
    assert bytes(bare) == b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def test_make_response_copies_and_tags() -> None:
    inv = _invite()
    inv = Request(
        inv.method, inv.uri, inv.headers.add("Record-Route", "<sip:p1;lr>").add("Timestamp", "54"), inv.body
    )
    trying = make_response(inv, 100, to_tag="xyz")
    assert trying.to.tag is None
    assert trying.headers.get("Timestamp") == "54"
    assert "Record-Route" not in trying.headers
    ok = make_response(
        inv,
        200,
        to_tag="xyz",
        contact=NameAddr(SipUri("192.0.2.4", "bob")),
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    assert ok.reason == "OK"
    assert ok.to.tag == "xyz"
    assert ok.from_.tag == "1928301774"
    assert ok.vias == inv.vias
    assert ok.call_id == inv.call_id
    assert ok.cseq == inv.cseq
    assert [str(r.uri) for r in ok.record_route] == ["sip:p1;lr"]
    again = parse_datagram_untrusted(bytes(ok))
    assert isinstance(again, Response)
    assert again == ok
    busy = make_response(inv, 486, to_tag="xyz")
    assert busy.reason == "Busy Here"
    assert "Record-Route" not in busy.headers
    assert reason_phrase(499) == "Bad Request"
    assert reason_phrase(799) == "Unknown"


def test_with_top_via() -> None:
    inv = _invite()
    via = inv.top_via.with_param("received", "10.1.1.1")
    moved = inv.with_top_via(via)
    assert moved.top_via.received == "10.1.1.1"
    assert len(moved.vias) == 1
    assert Request("X", SipUri("h"), Headers()).with_top_via(VIA).top_via == VIA


def test_accessor_errors_on_built_messages() -> None:
    empty = Response(200, "OK", Headers())
    for attr, msg in [("call_id", "missing Call-ID"), ("top_via", "missing Via"), ("cseq", "missing CSeq")]:
        with pytest.raises(SipParseError, match=msg):
            getattr(empty, attr)
    assert empty.max_forwards is None
    assert empty.expires is None
    assert empty.content_type is None
    star = Response(200, "OK", Headers.from_pairs([("Contact", "*"), ("Contact", "<sip:a>")]))
    with pytest.raises(SipParseError, match="Contact: \\* combined"):
        _ = star.contacts
    assert Response(200, "OK", Headers.from_pairs([("m", "*")])).contact_is_star
