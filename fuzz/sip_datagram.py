"""SIP over UDP: `sip.parser.parse_datagram_untrusted` and the typed accessors of what it accepts.

Contract: only `SipParseError` escapes the parser; an accepted message serializes and parses back
to itself; its accessors (Via, CSeq, From/To name-addr, Contact, Route, URIs) do not fail, since the
parser validated them; the header parsers used on demand (auth parameters, challenges,
credentials and their verification) raise only `SipParseError`; a refused request with a readable
head gets a stateless error response (or None), never an exception.
"""

from __future__ import annotations

import contextlib

from fuzz.known import is_known
from sip.auth import parse_auth_params, parse_challenge, parse_credentials, verify
from sip.errors import LocalProtocolError as SipLocalProtocolError
from sip.errors import SipParseError
from sip.headers import parse_cseq, parse_name_addr, parse_via
from sip.message import Request, Response, error_response
from sip.parser import KeepAlive, parse_datagram_untrusted
from sip.uri import SipUri, parse_uri

HA1 = "0" * 32
AUTH_HEADERS = ("WWW-Authenticate", "Proxy-Authenticate", "Authorization", "Proxy-Authorization")


def check_message(msg: Request | Response) -> None:
    """The accessors of an accepted message, and its round trip."""
    assert parse_datagram_untrusted(bytes(msg)) == msg, "round trip changed the message"
    _ = (msg.call_id, msg.cseq, msg.from_, msg.to, msg.contacts, msg.record_route, msg.route)
    _ = (msg.max_forwards, msg.expires, msg.content_type, msg.contact_is_star)
    for via in msg.vias:
        _ = (via.branch, via.received, via.has_rport, via.rport, via.sent_by, str(via))
    assert msg.top_via == msg.vias[0]
    for addr in (msg.from_, msg.to, *msg.contacts, *msg.route):
        _ = (addr.tag, addr.expires, str(addr))
        if isinstance(addr.uri, SipUri):
            _ = (addr.uri.transport, addr.uri.host_no_brackets, str(addr.uri.without_headers()))
    if isinstance(msg, Request):
        assert msg.cseq.method == msg.method
        _ = str(msg.uri)
    for name in AUTH_HEADERS:
        for value in msg.headers.get_all(name):
            check_auth(value, msg.method if isinstance(msg, Request) else msg.cseq.method, msg.body)


def check_auth(value: str, method: str, body: bytes) -> None:
    """Auth headers are parsed only when used (registrar, UAC): they may refuse, never crash."""
    for parse in (lambda v: parse_auth_params(v, "fuzz"), parse_challenge):
        with contextlib.suppress(SipParseError):
            parse(value)
    try:
        credentials = parse_credentials(value)
    except SipParseError:
        return
    try:
        assert verify(credentials, method, HA1, body) in (True, False)
    except TypeError as exc:
        if is_known(exc) is None:
            raise


def check_text(text: str) -> None:
    """The header-value parsers on arbitrary text (the registrar and dialogs use them directly)."""
    for parse in (parse_via, parse_cseq, lambda t: parse_name_addr(t, "fuzz"), parse_uri):
        with contextlib.suppress(SipParseError):
            parse(text)
    check_auth(text, "REGISTER", b"")


def one_input(data: bytes) -> None:
    """One datagram; the first line alone also goes through the header parsers."""
    try:
        msg = parse_datagram_untrusted(data)
    except SipParseError as err:
        assert str(err), err
        assert err.status_hint in (400, 505, 513), err
        response = error_response(err, to_tag="fuzz")
        if response is not None:
            # It copies the request's Via/From/To/Call-ID/CSeq as they came (RFC 3261 §8.2.6.2), so
            # it need not parse itself; it must serialize and carry the status hint.
            assert response.status == err.status_hint
            assert bytes(response)
    else:
        if not isinstance(msg, KeepAlive):
            try:
                check_message(msg)
            except SipLocalProtocolError as exc:
                if is_known(exc) is None:
                    raise
    check_text(data[:2048].split(b"\n", 1)[0].decode("utf-8", "surrogateescape"))
