"""Messages captured from the real peers (Kamailio, baresip, SIPp; see data/README.md), on bytes.

Each is parsed as a datagram and as a stream fed byte by byte, checked field by field, and
round-tripped. baresip's digest answer to our challenge is verified with our server side.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sip.auth import DigestClient, challenges, compute_ha1, parse_credentials, verify
from sip.dialog import Dialog
from sip.headers import NameAddr
from sip.message import Request, Response
from sip.parser import StreamParser, parse_datagram_untrusted
from sip.uri import Params, SipUri

DATA = Path(__file__).resolve().parent / "data"
FILES = sorted(p.name for p in DATA.glob("*.bin"))


def load(name: str) -> Request | Response:
    msg = parse_datagram_untrusted((DATA / name).read_bytes())
    assert isinstance(msg, Request | Response)
    return msg


def test_all_captures_are_present() -> None:
    assert len(FILES) == 9


@pytest.mark.parametrize("name", FILES)
def test_capture_parses_the_same_every_way(name: str) -> None:
    data = (DATA / name).read_bytes()
    msg = load(name)
    assert parse_datagram_untrusted(bytes(msg)) == msg
    stream = StreamParser()
    events = []
    for i in range(len(data)):
        stream.feed(data[i : i + 1])
        events.extend(stream.events())
    assert events == [msg]
    assert stream.buffered == 0


def test_kamailio_challenges() -> None:
    r401 = load("kamailio_register_401.bin")
    assert isinstance(r401, Response)
    assert r401.status == 401
    (www,) = challenges(r401)
    assert (www.realm, www.qop, www.proxy, www.reply_header) == (
        "127.0.0.1",
        ("auth",),
        False,
        "Authorization",
    )
    r407 = load("kamailio_invite_407.bin")
    assert isinstance(r407, Response)
    (proxy,) = challenges(r407)
    assert (proxy.realm, proxy.qop, proxy.proxy, proxy.algorithm) == ("127.0.0.1", ("auth",), True, "MD5")
    assert r407.top_via.received == "127.0.0.1"
    assert r407.top_via.rport == r407.top_via.port
    assert r407.to.tag is not None
    creds = DigestClient("100", "pass100").authorize(proxy, "INVITE", "sip:101@127.0.0.1", "0a4f113b")
    assert verify(creds, "INVITE", compute_ha1("100", "127.0.0.1", "pass100"))


def test_baresip_register_and_its_digest_answer() -> None:
    first = load("baresip_register.bin")
    second = load("baresip_register_auth.bin")
    assert isinstance(first, Request)
    assert isinstance(second, Request)
    assert (second.method, second.call_id, second.cseq.seq) == ("REGISTER", first.call_id, first.cseq.seq + 1)
    (contact,) = second.contacts
    assert contact.expires == 600
    assert contact.params.get("+sip.instance") == '"<urn:uuid:411f3a53-d367-985a-4254-aa4c98c2b36a>"'
    assert second.top_via.has_rport
    assert second.top_via.rport is None
    creds = parse_credentials(second.headers.get("Authorization") or "")
    assert (creds.username, creds.nonce, creds.opaque, creds.qop, creds.nc) == (
        "101", "bm9uY2UtY2FwdHVyZWQ", "op4que", "auth", "00000001",
    )  # fmt: skip
    ha1 = compute_ha1("101", "127.0.0.1", "pass101")
    assert verify(creds, "REGISTER", ha1)
    assert not verify(creds, "REGISTER", compute_ha1("101", "127.0.0.1", "wrong"))


@pytest.mark.parametrize(("name", "reason", "contact"), [
    ("baresip_invite_200.bin", "Answering", SipUri("127.0.0.1", "101-0x55ef7dd1f320", 5072)),
    ("sipp_invite_200.bin", "OK", SipUri("127.0.0.1", "service", 5090, Params((("transport", "UDP"),)))),
])  # fmt: skip
def test_answers_create_dialogs(name: str, reason: str, contact: SipUri) -> None:
    ok = load(name)
    assert isinstance(ok, Response)
    assert (ok.status, ok.reason) == (200, reason)
    ct = ok.content_type
    assert ct is not None
    assert ct.media_type == "application/sdp"
    assert ok.body.startswith(b"v=0\r\n")
    assert len(ok.body) == int(
        ((DATA / name).read_bytes().split(b"Content-Length:")[1].split(b"\r\n")[0]).strip()
    )
    invite = Request("INVITE", SipUri("127.0.0.1", "101"), ok.headers.remove("Contact"))
    dialog = Dialog.from_uac_response(invite, ok, NameAddr(SipUri("127.0.0.1", "100")))
    assert dialog.remote_target == contact
    assert dialog.local_tag == "cap100"
    assert dialog.remote_tag == ok.to.tag
