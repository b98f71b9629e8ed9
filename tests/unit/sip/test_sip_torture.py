"""RFC 4475 torture cases, written from the RFC's descriptions (§3.1.1 valid, §3.1.2 invalid, §3.3).

Valid messages must parse with the right values; invalid ones must raise SipParseError with the
expected message (and never anything else). Each message is also fed to the stream framer.
"""

from __future__ import annotations

import pytest

from sip.errors import SipParseError
from sip.message import Request, Response, error_response
from sip.parser import BadMessage, StreamParser, parse_datagram_untrusted
from sip.uri import AbsoluteUri, SipUri


def raw(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def req(data: bytes) -> Request:
    msg = parse_datagram_untrusted(data)
    assert isinstance(msg, Request)
    return msg


WSINV = raw(
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0",
    "TO :",
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
    'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>',
    "  ;",
    "  tag = 98asjd8",
    "MaX-fOrWaRdS: 0068",
    "Call-ID: wsinv.ndaksdj@192.0.2.1",
    "Content-Length   : 150",
    "cseq: 0009",
    "  INVITE",
    "Via  : SIP  /   2.0",
    " /UDP",
    "    192.0.2.2;branch=390skdjuw",
    "s :",
    "NewFangledHeader:   newfangled value",
    " continued newfangled value",
    "UnknownHeaderWithUnusualValue: ;;,,;;,;",
    "Content-Type: application/sdp",
    "Route:",
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;",
    "  branch  =   z9hG4bK9ikj8  ,",
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=",
    " z9hG4bK30239",
    'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =',
    "      newvalue ;",
    "  secondparam ; q = 0.33",
    body=(
        b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\n"
        b"t=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n"
    ),
)


def test_wsinv_short_tortuous_invite() -> None:
    """§3.1.1.1: folding, HCOLON whitespace, case-insensitive names, compact forms, LWS in Via."""
    assert len(WSINV.split(b"\r\n\r\n", 1)[1]) == 150
    msg = req(WSINV)
    assert msg.method == "INVITE"
    assert isinstance(msg.uri, SipUri)
    assert "unknownparam" in msg.uri.params
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display_name == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert msg.cseq.seq == 9
    assert msg.cseq.method == "INVITE"
    vias = msg.vias
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert msg.headers.get("Subject") == ""
    (contact,) = msg.contacts
    assert contact.display_name == 'Quoted string ""'
    assert contact.params.get("newparam") == "newvalue"
    assert "secondparam" in contact.params
    assert contact.params.get("q") == "0.33"
    (route,) = msg.route
    assert isinstance(route.uri, SipUri)
    assert route.uri.params.get("unknownwith") == "value"
    assert msg.content_type is not None
    assert msg.content_type.media_type == "application/sdp"
    assert len(msg.body) == 150
    assert parse_datagram_untrusted(bytes(msg)) == msg


def test_intmeth_wide_range_of_valid_characters() -> None:
    """§3.1.1.2: unusual but valid characters in method, URI user/password, Call-ID, quoted-pairs."""
    method = "!interesting-Method0123456789_*+`.%indeed'~"
    user = "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    data = raw(
        f"{method} sip:{user}:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0",
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
        f'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:{user}@example.com>',
        "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
        '"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9";tag=_token~1\'+`*%!-.',
        "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        f"CSeq: 139122385 {method}",
        "Max-Forwards: 255",
        "extensionHeader-!.%*+_`'~: \xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb",
        "Content-Length: 0",
    )
    # The test text above is latin-1 code points standing for raw bytes.
    data = data.decode("utf-8", "surrogateescape").encode("latin-1", "ignore")
    msg = req(data)
    assert msg.method == method
    assert isinstance(msg.uri, SipUri)
    assert msg.uri.user == user
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert msg.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert msg.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.top_via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.max_forwards == 255
    assert "extensionHeader-!.%*+_`'~" in msg.headers
    assert parse_datagram_untrusted(bytes(msg)) == msg


def test_esc01_valid_percent_escaping() -> None:
    """§3.1.1.3: escapes are kept as written in URIs and decoded on request."""
    msg = req(
        raw(
            "INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0",
            "To: sip:%75se%72@example.com",
            "From: <sip:I%20have%20spaces@example.net>;tag=938",
            "Max-Forwards: 87",
            "i: esc01.239409asdfakjkn23onasd0-3234",
            "CSeq: 234234 INVITE",
            "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
            "C: application/sdp",
            "Contact: <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
            "Content-Length: 0",
        )
    )
    assert isinstance(msg.uri, SipUri)
    assert msg.uri.user == "sips%3Auser%40example.com"
    assert msg.uri.host == "example.net"
    from sip.uri import unescape

    assert unescape(msg.uri.user or "") == "sips:user@example.com"
    to_uri = msg.to.uri
    assert isinstance(to_uri, SipUri)
    assert unescape(to_uri.user or "") == "user"
    contact_uri = msg.contacts[0].uri
    assert isinstance(contact_uri, SipUri)
    assert "%6C%72" in contact_uri.params


def test_escnull_escaped_nulls() -> None:
    """§3.1.1.4: %00 in URIs is just data."""
    msg = req(
        raw(
            "REGISTER sip:example.com SIP/2.0",
            "To: sip:null-%00-null@example.com",
            "From: sip:null-%00-null@example.com;tag=839923423",
            "Max-Forwards: 70",
            "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
            "CSeq: 14398234 REGISTER",
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
            "Contact: <sip:%00@host5.example.com>",
            "Contact: <sip:%00%00@host5.example.com>",
            "L:0",
        )
    )
    assert [c.uri for c in msg.contacts] == [
        SipUri("host5.example.com", "%00"),
        SipUri("host5.example.com", "%00%00"),
    ]
    assert msg.from_.tag == "839923423"


def test_esc02_percent_that_is_not_an_escape() -> None:
    """§3.1.1.5: `%` in a method token and display name is not an escape."""
    msg = req(
        raw(
            "RE%47IST%45R sip:registrar.example.com SIP/2.0",
            'To: "%Z%45" <sip:resource@example.com>',
            'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
            "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
            "Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209793",
            "CSeq: 29344 RE%47IST%45R",
            "Max-Forwards: 70",
            "Contact: <sip:alias1@host1.example.com>",
            "Contact: <sip:alias2@host2.example.com>",
            "l: 0",
        )
    )
    assert msg.method == "RE%47IST%45R"
    assert msg.cseq.method == msg.method
    assert msg.to.display_name == "%Z%45"
    assert len(msg.contacts) == 2


def test_lwsdisp_no_lws_between_display_name_and_laquot() -> None:
    """§3.1.1.6."""
    msg = req(
        raw(
            "OPTIONS sip:user@example.com SIP/2.0",
            "To: sip:user@example.com",
            "From: caller<sip:caller@example.com>;tag=323",
            "Max-Forwards: 70",
            "Call-ID: lwsdisp.1234abcd@funky.example.com",
            "CSeq: 60 OPTIONS",
            "Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw",
            "l: 0",
        )
    )
    assert msg.from_.display_name == "caller"
    assert msg.from_.tag == "323"


def test_longreq_long_values() -> None:
    """§3.1.1.7: long header values, many Vias, long tokens everywhere."""
    long = "long" * 120
    vias = [f"v: SIP/2.0/TCP sip{n}.example.com;branch=z9hG4bK{n}" for n in range(33, 0, -1)]
    msg = req(
        raw(
            f"INVITE sip:user@example.com;{long}param={long}value SIP/2.0",
            f'To: "I have a user name of {"extreme" * 60} proportion" <sip:user@example.com:6000;{long}=1>',
            f"F: sip:{'amazinglylongcallername' * 10}@example.net;tag=12{'982' * 100}424",
            f"Call-ID: longreq.{'onereallyreallyreallyreallyreally' * 20}longcallid",
            "CSeq: 3882340 INVITE",
            "Max-Forwards: 70",
            f"Via: SIP/2.0/TCP host1.example.com;received=192.0.2.5;branch=z9hG4bK{'very' * 100}",
            *vias,
            f"X-Foo: {long}",
            "l: 0",
        )
    )
    assert len(msg.vias) == 34
    assert msg.vias[-1].host == "sip1.example.com"
    assert msg.to.display_name is not None
    assert msg.to.display_name.count("extreme") == 60
    assert msg.from_.tag == "12" + "982" * 100 + "424"


def test_dblreq_extra_trailing_octets_in_datagram() -> None:
    """§3.1.1.8: a second message after Content-Length bytes in one datagram is discarded."""
    first = raw(
        "REGISTER sip:example.com SIP/2.0",
        "To: sip:j.user@example.com",
        "From: sip:j.user@example.com;tag=43251j3j324",
        "Max-Forwards: 8",
        "I: dblreq.0ha0isndaksdj99sdfafnl3lk233412",
        "Contact: sip:j.user@host.example.com",
        "CSeq: 8 REGISTER",
        "Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492",
        "Content-Length: 0",
    )
    second = raw(
        "INVITE sip:joe@example.com SIP/2.0",
        "t: sip:joe@example.com",
        "From: sip:caller@example.net;tag=141334",
        "Max-Forwards: 8",
        "Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15",
        "CSeq: 8 INVITE",
        "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234",
        "Content-Type: application/sdp",
        "Content-Length: 4",
        body=b"v=0\n",
    )
    msg = req(first + second)
    assert msg.method == "REGISTER"
    assert msg.body == b""
    assert parse_datagram_untrusted(bytes(msg)) == parse_datagram_untrusted(first)


def test_semiuri_semicolon_in_user_part() -> None:
    """§3.1.1.9: `;` in the user part belongs to the user, not to URI parameters."""
    msg = req(
        raw(
            "OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0",
            "To: sip:j_user@example.com",
            "From: sip:caller@example.org;tag=33242",
            "Max-Forwards: 3",
            "Call-ID: semiuri.0ha0isndaksdj",
            "CSeq: 8 OPTIONS",
            "Accept: application/sdp, application/pkcs7-mime,",
            "        multipart/mixed, multipart/signed,",
            "        message/sip, message/sipfrag",
            "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw",
            "l: 0",
        )
    )
    assert isinstance(msg.uri, SipUri)
    assert msg.uri.user == "user;par=u%40example.net"
    assert msg.uri.host == "example.com"
    assert len(msg.uri.params) == 0
    assert len(msg.headers.get_all("Accept")) == 6


def test_transports_varied_and_unknown() -> None:
    """§3.1.1.10."""
    msg = req(
        raw(
            "OPTIONS sip:user@example.com SIP/2.0",
            "To: sip:user@example.com",
            "From: <sip:caller@example.com>;tag=323",
            "Max-Forwards: 70",
            "Call-ID:  transports.kijh4akdnaqjkwendsasfdj",
            "Accept: application/sdp",
            "CSeq: 60 OPTIONS",
            "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
            "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
            "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
            "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
            "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
            "l: 0",
        )
    )
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_unreason_and_noreason() -> None:
    """§3.1.1.12 (UTF-8 reason phrase) and §3.1.1.13 (empty reason phrase)."""
    common = (
        "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923",
        "Call-ID: unreason.1234ksdfak3j2erwedfsASdf",
        "CSeq: 35 INVITE",
        "From: sip:user@example.com;tag=11141343",
        "To: sip:user@example.edu;tag=2229",
        "Content-Length: 0",
    )
    reason = "= 2**3 * 5**2 но сто девяносто девять - простое"
    msg = parse_datagram_untrusted(raw(f"SIP/2.0 200 {reason}", *common))
    assert isinstance(msg, Response)
    assert msg.status == 200
    assert msg.reason == reason
    msg = parse_datagram_untrusted(raw("SIP/2.0 100 ", *common))
    assert isinstance(msg, Response)
    assert msg.status == 100
    assert msg.reason == ""


def test_mpart01_multipart_body_is_opaque() -> None:
    """§3.1.1.11: the body is kept byte for byte; Content-Type parameters are parsed."""
    body = b"--7a9cbec02ceef655\r\nContent-Type: text/plain\r\n\r\nx\r\n--7a9cbec02ceef655--\r\n"
    msg = req(
        raw(
            "MESSAGE sip:kumiko@example.org SIP/2.0",
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543-;rport",
            "Max-Forwards: 70",
            "Route: <sip:127.0.0.1:5080>",
            "Identity: r5mwreLuyDRYBi/0TiPwEsY3rEVsk/G2WxhgTV1PF7hHuLIK0YWVKZhKv9Mj8UeXqkMVbnVq37CD+813gv"
            "YjcBUaZngQmXc9WNZSDNGCzA+fWl9MEUHWIZo1CeJebdY/XlgKeTa0Olvq0rt70Q5jiSfbqMJmQFteeivUhkMWYUA=",
            "Contact: <sip:fluffy@127.0.0.1:5070>",
            "To: <sip:kumiko@example.org>",
            "From: <sip:fluffy@example.com>;tag=2fb0dcc9",
            "Call-ID: 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA..",
            "CSeq: 1 MESSAGE",
            "Content-Transfer-Encoding: binary",
            "Content-Type: multipart/mixed;boundary=7a9cbec02ceef655",
            "Date: Sat, 15 Oct 2005 04:44:56 GMT",
            "User-Agent: SIPimp.org/0.2.5 (curses)",
            f"Content-Length: {len(body)}",
            body=body,
        )
    )
    assert msg.body == body
    ct = msg.content_type
    assert ct is not None
    assert ct.media_type == "multipart/mixed"
    assert ct.params.get("boundary") == "7a9cbec02ceef655"
    assert msg.top_via.has_rport
    assert msg.top_via.rport is None
    assert msg.top_via.port == 5070


# --- §3.1.2 invalid messages ------------------------------------------------------------------

_COMMON = (
    "Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw",
    "Max-Forwards: 70",
    "From: sip:caller@example.net;tag=134161461246",
    "Call-ID: torture.invalid.1",
)


@pytest.mark.parametrize(
    ("name", "data", "expected", "status"),
    [
        (
            "badinv01 extraneous header separators",
            raw(
                "INVITE sip:user@example.com SIP/2.0",
                "To: sip:j.user@example.com",
                "From: sip:caller@example.net;tag=134161461246",
                "Max-Forwards: 7",
                "Call-ID: badinv01.0ha0isndaksdjasdf3234nas",
                "CSeq: 8 INVITE",
                "Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
                'Contact: "Joe" <sip:joe@example.org>;;;;',
                "Content-Length: 0",
            ),
            "empty element in Via",
            400,
        ),
        (
            "clerr content length larger than message",
            raw(
                "INVITE sip:user@example.com SIP/2.0",
                "To: sip:j.user@example.com",
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: 9999",
                body=b"v=0\r\n",
            ),
            "Content-Length 9999 exceeds the 5 bytes after the headers",
            400,
        ),
        (
            "ncl negative content-length",
            raw(
                "INVITE sip:user@example.com SIP/2.0",
                "To: sip:j.user@example.com",
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: -999",
                body=b"v=0\r\n",
            ),
            "Content-Length is not a number: '-999'",
            400,
        ),
        (
            "scalar02 overlarge CSeq",
            raw(
                "REGISTER sip:example.com SIP/2.0",
                "To: sip:j.user@example.com",
                *_COMMON,
                "CSeq: 36893488147419103232 REGISTER",
                "Content-Length: 0",
            ),
            "CSeq number too large",
            400,
        ),
        (
            "scalar02 overlarge Max-Forwards",
            raw(
                "REGISTER sip:example.com SIP/2.0",
                "To: sip:j.user@example.com",
                "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3",
                "From: sip:j.user@example.com;tag=43251j3j324",
                "Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32",
                "Max-Forwards: 300",
                "CSeq: 8 REGISTER",
                "Content-Length: 0",
            ),
            "Max-Forwards too large: '300'",
            400,
        ),
        (
            "scalar02 overlarge Expires",
            raw(
                "REGISTER sip:example.com SIP/2.0",
                "To: sip:j.user@example.com",
                *_COMMON,
                "CSeq: 8 REGISTER",
                "Expires: 10000000000000000000",
                "Content-Length: 0",
            ),
            "Expires too large",
            400,
        ),
        (
            "scalar02 overlarge port in Contact",
            raw(
                "REGISTER sip:example.com SIP/2.0",
                "To: sip:j.user@example.com",
                *_COMMON,
                "CSeq: 8 REGISTER",
                "Contact: <sip:j.user@host129.example.com:1000000>",
                "Content-Length: 0",
            ),
            "invalid port '1000000'",
            400,
        ),
        (
            "scalarlg response with overlarge CSeq",
            raw(
                "SIP/2.0 503 Service Unavailable",
                "Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw",
                "To: <sip:user@example.com>;tag=2easdjfejw",
                "From: <sip:other@example.net>;tag=3342436",
                "Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r",
                "CSeq: 36893488147419103232 INVITE",
                "Retry-After: 36893488147419103232",
                'Warning: 1812 overture "In Progress"',
                "Content-Length: 0",
            ),
            "CSeq number too large",
            400,
        ),
        (
            "quotbal unterminated quoted display name",
            raw(
                "INVITE sip:user@example.com SIP/2.0",
                'To: "Mr. J. User <sip:j.user@example.com>',
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: 0",
            ),
            "unterminated quoted display name in To",
            400,
        ),
        (
            "ltgtruri <> enclosing the Request-URI",
            raw(
                "INVITE <sip:user@example.com> SIP/2.0",
                "To: sip:user@example.com",
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: 0",
            ),
            "has no valid scheme",
            400,
        ),
        (
            "lwsruri LWS inside the Request-URI",
            raw(
                "INVITE sip:user@example.com; lr SIP/2.0",
                "To: sip:user@example.com",
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: 0",
            ),
            "malformed Request-Line",
            400,
        ),
        (
            "lwsstart multiple SP between Request-Line elements",
            raw(
                "INVITE  sip:user@example.com  SIP/2.0",
                "To: sip:user@example.com",
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: 0",
            ),
            "malformed Request-Line",
            400,
        ),
        (
            "trws SP at the end of the Request-Line",
            raw(
                "OPTIONS sip:remote-target@example.com SIP/2.0  ",
                "To: sip:user@example.com",
                *_COMMON,
                "CSeq: 8 OPTIONS",
                "Content-Length: 0",
            ),
            "malformed Request-Line",
            400,
        ),
        (
            "escruri escaped headers in the Request-URI",
            raw(
                "INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0",
                "To: sip:user@example.com",
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: 0",
            ),
            "Request-URI must not contain headers",
            400,
        ),
        (
            "regbadct URI with ? not enclosed in <>",
            raw(
                "REGISTER sip:example.com SIP/2.0",
                "To: sip:user@example.com",
                *_COMMON,
                "CSeq: 8 REGISTER",
                "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E",
                "Content-Length: 0",
            ),
            "URI with '?' must be enclosed in <> in Contact",
            400,
        ),
        (
            "badaspec whitespace inside <addr-spec>",
            raw(
                "OPTIONS sip:user@example.org SIP/2.0",
                'To: "Watson, Thomas" < sip:t.watson@example.org >',
                *_COMMON,
                "CSeq: 8 OPTIONS",
                "Content-Length: 0",
            ),
            "whitespace inside <URI> in To",
            400,
        ),
        (
            "baddn non-token characters in an unquoted display name",
            raw(
                "OPTIONS sip:t.watson@example.org SIP/2.0",
                "To: sip:t.watson@example.org",
                "Via: SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw",
                "Max-Forwards: 70",
                "From: Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
                "Call-ID: baddn.31415@c.example.com",
                "CSeq: 8 OPTIONS",
                "Content-Length: 0",
            ),
            "invalid character ',' in unquoted display name in From",
            400,
        ),
        (
            "badvers unknown protocol version",
            raw(
                "OPTIONS sip:t.watson@example.org SIP/7.0",
                "To: sip:t.watson@example.org",
                *_COMMON,
                "CSeq: 8 OPTIONS",
                "Content-Length: 0",
            ),
            "unsupported SIP version 'SIP/7.0'",
            505,
        ),
        (
            "mismatch01 CSeq method differs from the Request-Line",
            raw(
                "OPTIONS sip:user@example.com SIP/2.0",
                "To: sip:j.user@example.com",
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: 0",
            ),
            "CSeq method 'INVITE' does not match 'OPTIONS'",
            400,
        ),
        (
            "mismatch02 unknown method with a mismatched CSeq",
            raw(
                "NEWMETHOD sip:user@example.com SIP/2.0",
                "To: sip:j.user@example.com",
                *_COMMON,
                "CSeq: 8 INVITE",
                "Content-Length: 0",
            ),
            "CSeq method 'INVITE' does not match 'NEWMETHOD'",
            400,
        ),
        (
            "bigcode overlarge response code",
            raw(
                "SIP/2.0 4294967301 better not break the receiver",
                "Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe",
                "Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i",
                "CSeq: 353494 INVITE",
                "From: <sip:user@example.com>;tag=39ansfi3",
                "To: <sip:user@example.edu>;tag=902jndnke3",
                "Content-Length: 0",
            ),
            "invalid status code '4294967301'",
            400,
        ),
        # §3.3 application-layer semantics that a parser must catch
        (
            "insuf missing required headers",
            raw(
                "INVITE sip:user@example.com SIP/2.0",
                "CSeq: 193942 INVITE",
                "Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf",
                "Content-Length: 0",
            ),
            "missing Call-ID header",
            400,
        ),
        (
            "multi01 several values in single-value headers",
            raw(
                "INVITE sip:user@company.com SIP/2.0",
                "Contact: <sip:caller@host25.example.net>",
                "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKkdjuw",
                "Max-Forwards: 70",
                "CSeq: 5 INVITE",
                "Call-ID: multi01.98asdh@192.0.2.1",
                "CSeq: 59 INVITE",
                "Call-ID: multi01.98asdh@192.0.2.2",
                "From: sip:caller@example.com;tag=3413415",
                "To: sip:user@example.com",
                "To: sip:other@example.net",
                "From: sip:caller@example.net;tag=2923420123",
                "Content-Length: 0",
            ),
            "2 CSeq headers where one is allowed",
            400,
        ),
        (
            "mcl01 several Content-Length values",
            raw(
                "OPTIONS sip:user@example.com SIP/2.0",
                "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423",
                "To: sip:user@example.com",
                "From: sip:other@example.net;tag=3923942",
                "Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf",
                "CSeq: 15932 OPTIONS",
                "Content-Length: 13",
                "Max-Forwards: 60",
                "Content-Length: 5",
                "Content-Type: text/plain",
                body=b"There's no way to know how many octets are supposed to be here.",
            ),
            "2 Content-Length headers",
            400,
        ),
    ],
)
def test_invalid_torture_messages(name: str, data: bytes, expected: str, status: int) -> None:
    with pytest.raises(SipParseError, match=None) as info:
        parse_datagram_untrusted(data)
    assert expected in str(info.value), (name, str(info.value))
    assert info.value.status_hint == status
    # On a stream the same message is reported, not raised, and the framer stays usable.
    parser = StreamParser()
    parser.feed(data)
    events = parser.events()
    if name.startswith("clerr"):
        assert events == []
        assert parser.buffered == len(data)
    else:
        assert events
        assert isinstance(events[0], BadMessage)
        assert events[0].error.status_hint == status


def test_invalid_request_gets_a_400_built_from_its_head() -> None:
    data = raw(
        "OPTIONS sip:user@example.com SIP/2.0",
        "To: sip:j.user@example.com",
        *_COMMON,
        "CSeq: 8 INVITE",
        "Content-Length: 0",
    )
    with pytest.raises(SipParseError) as info:
        parse_datagram_untrusted(data)
    answer = error_response(info.value, to_tag="srv1")
    assert answer is not None
    assert answer.status == 400
    assert answer.reason == "Bad Request"
    again = parse_datagram_untrusted(bytes(answer))
    assert isinstance(again, Response)
    assert again.top_via.branch == "z9hG4bKkdjuw"
    assert again.to.tag == "srv1"
    assert again.call_id == "torture.invalid.1"


# --- §3.3 valid messages with unusual semantics: they must parse ----------------------------------


def test_unknown_and_novel_uri_schemes() -> None:
    """§3.3.2 unkscm, §3.3.3 novelsc, §3.3.4 unksm2: parse; the TU answers 416 where it matters."""
    tail = (
        "To: isbn:2983792873",
        "From: <http://www.example.com>;tag=3234233",
        "Call-ID: unksm2.daksdj@hyphenated-host.example.com",
        "CSeq: 234902 REGISTER",
        "Max-Forwards: 70",
        "Via: SIP/2.0/UDP 192.0.2.21:5060;branch=z9hG4bKkdjuw",
        "Contact: <name:John_Smith>",
        "l: 0",
    )
    msg = req(raw("REGISTER sip:example.com SIP/2.0", *tail))
    assert msg.to.uri == AbsoluteUri("isbn", "2983792873")
    assert msg.contacts[0].uri == AbsoluteUri("name", "John_Smith")
    msg = req(
        raw(
            "OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0",
            *tail[:3],
            "CSeq: 3923239 OPTIONS",
            *tail[4:],
        )
    )
    assert msg.uri == AbsoluteUri("nobodyknowsthisscheme", "totallyopaquecontent")
    msg = req(
        raw("OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0", *tail[:3], "CSeq: 3923239 OPTIONS", *tail[4:])
    )
    assert msg.uri == AbsoluteUri("soap.beep", "//192.0.2.103:3002")


def test_contact_params_cparam01_cparam02_regescrt() -> None:
    """§3.3.12-14: header parameter vs URI parameter, and escaped headers inside <URI>."""
    base = (
        "REGISTER sip:example.com SIP/2.0",
        "Via: SIP/2.0/UDP saturn.example.com:5060;branch=z9hG4bKkdjuw",
        "Max-Forwards: 70",
        "From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe",
        "To: sip:watson@example.com",
        "Call-ID: cparam01.70710@saturn.example.com",
        "CSeq: 2 REGISTER",
    )
    msg = req(raw(*base, "Contact: sip:+19725552222@gw1.example.net;unknownparam", "l: 0"))
    (c,) = msg.contacts
    assert "unknownparam" in c.params
    assert isinstance(c.uri, SipUri)
    assert len(c.uri.params) == 0
    msg = req(raw(*base, "Contact: <sip:+19725552222@gw1.example.net;unknownparam>", "l: 0"))
    (c,) = msg.contacts
    assert len(c.params) == 0
    assert isinstance(c.uri, SipUri)
    assert "unknownparam" in c.uri.params
    msg = req(raw(*base, "Contact: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>", "l: 0"))
    (c,) = msg.contacts
    assert isinstance(c.uri, SipUri)
    assert c.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)


def test_inv2543_rfc2543_style_request_and_zero_max_forwards() -> None:
    """§3.4.1 inv2543 (no branch, no Max-Forwards) and §3.3.11 zeromf."""
    msg = req(
        raw(
            "INVITE sip:UserB@example.com SIP/2.0",
            "Via: SIP/2.0/UDP iftgw.example.com",
            "From: <sip:+13035551111@ift.client.example.net;user=phone>",
            "Record-Route: <sip:UserB@example.com;maddr=ss1.example.com>",
            "To: sip:+16505552222@ss1.example.net;user=phone",
            "Call-ID: inv2543.1717@ift.client.example.com",
            "CSeq: 56 INVITE",
            "Content-Type: application/sdp",
            body=b"v=0\r\n",
        )
    )
    assert msg.top_via.branch is None
    assert msg.max_forwards is None
    assert msg.from_.tag is None
    assert msg.body == b"v=0\r\n"  # no Content-Length on UDP: the rest of the datagram
    assert isinstance(msg.uri, SipUri)
    assert msg.uri.user == "UserB"
    msg = req(
        raw(
            "OPTIONS sip:user@example.com SIP/2.0",
            "To: sip:user@example.com",
            *_COMMON[:1],
            "Max-Forwards: 0",
            *_COMMON[2:],
            "CSeq: 1 OPTIONS",
            "l: 0",
        )
    )
    assert msg.max_forwards == 0


def test_regaut01_unknown_authorization_scheme_parses() -> None:
    """§3.3.7: an unknown Authorization scheme does not break parsing."""
    msg = req(
        raw(
            "REGISTER sip:example.com SIP/2.0",
            "To: sip:j.user@example.com",
            *_COMMON,
            "CSeq: 9338 REGISTER",
            "Authorization: NoOneKnowsThisScheme opaque-data=here",
            "l: 0",
        )
    )
    assert msg.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


@pytest.mark.parametrize(
    ("name", "lines"),
    [
        ("bext01 Require/Proxy-Require of unknown extensions", (
            "Require: nothingSupportsThis, nothingSupportsThisEither",
            "Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis",
        )),
        ("invut unknown Content-Type", ("Content-Type: application/unknownformat",)),
        ("sdp01 unacceptable Accept", ("Accept: text/nobodyknowsthis",)),
        ("badbranch magic cookie alone", ()),
        ("baddate non-GMT Date is tolerated (Date is not used)", ("Date: Fri, 01 Jan 2010 16:00:00 EST",)),
    ],
)  # fmt: skip
def test_semantically_odd_but_parseable(name: str, lines: tuple[str, ...]) -> None:
    """§3.2.1, §3.3.5, §3.3.6, §3.3.15 (and §3.1.2.12, deliberately tolerated): these parse; the
    TU decides (420, 415, 406...)."""
    via = "Via: SIP/2.0/UDP 192.0.2.100;branch=z9hG4bK" if name.startswith("badbranch") else _COMMON[0]
    msg = req(raw("OPTIONS sip:user@example.com SIP/2.0", "To: sip:j_user@example.com", via, *_COMMON[1:],
                  "CSeq: 8 OPTIONS", *lines, "Content-Length: 0"))  # fmt: skip
    for line in lines:
        header, _, value = line.partition(": ")
        if header != "Require" and header != "Proxy-Require":
            assert msg.headers.get(header) == value
    if name.startswith("bext01"):
        assert msg.headers.get_all("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    if name.startswith("badbranch"):
        assert msg.top_via.branch == "z9hG4bK"


def test_bcast_response_with_broadcast_received() -> None:
    """§3.3.10: a 200 whose Via says received=255.255.255.255 parses; where to send is the edge's call."""
    msg = parse_datagram_untrusted(
        raw(
            "SIP/2.0 200 OK",
            "Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923;received=255.255.255.255",
            "Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf",
            "CSeq: 35 INVITE",
            "From: sip:user@example.com;tag=11141343",
            "To: sip:user@example.edu;tag=2229",
            "Content-Length: 0",
        )
    )
    assert isinstance(msg, Response)
    assert msg.top_via.received == "255.255.255.255"
