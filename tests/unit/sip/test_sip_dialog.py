"""Dialogs (RFC 3261 §12-§15): UAC and UAS creation, in-dialog requests, ACK for 2xx, CANCEL."""

from __future__ import annotations

from typing import TypeVar

import pytest

from sip.dialog import (
    AnswerRetransmitter,
    Dialog,
    DialogId,
    DialogState,
    make_cancel,
    request_dialog_id,
    response_dialog_id,
)
from sip.errors import LocalProtocolError
from sip.headers import NameAddr, Via
from sip.message import Request, Response, make_request, make_response
from sip.parser import parse_datagram_untrusted
from sip.uri import Params, SipUri, parse_sip_uri

ALICE_CONTACT = NameAddr(SipUri("192.0.2.10", "100", 5090))
BOB_CONTACT = NameAddr(SipUri("192.0.2.4", "101", 5072, headers=(("x", "y"),)))
RR = ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]  # as the UAS sees them: nearest first


def state(d: Dialog) -> DialogState:
    """Read through a function so that mypy does not narrow the state across calls."""
    return d.state


def via(branch: str) -> Via:
    return Via("UDP", "192.0.2.10", 5090, Params((("branch", branch),)))


M = TypeVar("M", Request, Response)


def wire(msg: M) -> M:
    """Through bytes and the parser, as on the network."""
    again = parse_datagram_untrusted(bytes(msg))
    assert isinstance(again, type(msg))
    return again


def invite() -> Request:
    return make_request(
        "INVITE",
        SipUri("127.0.0.1", "101"),
        call_id="dlg-1",
        cseq=7,
        from_=NameAddr(SipUri("127.0.0.1", "100"), "Caller", Params((("tag", "ua1"),))),
        to=NameAddr(SipUri("127.0.0.1", "101")),
        via=via("z9hG4bKinv"),
        contact=ALICE_CONTACT,
        route=[NameAddr(parse_sip_uri("sip:p1.example.com;lr"))],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )


def as_received_by_uas(req: Request) -> Request:
    """The INVITE after two record-routing proxies (each prepends its Record-Route)."""
    return Request(
        req.method, req.uri, req.headers.add("Record-Route", RR[0]).add("Record-Route", RR[1]), req.body
    )


def test_uac_early_then_confirmed_with_route_set_and_ack() -> None:
    inv = invite()
    uas_inv = wire(as_received_by_uas(inv))
    ringing = wire(make_response(uas_inv, 180, to_tag="ua2", contact=BOB_CONTACT))
    d = Dialog.from_uac_response(inv, ringing, ALICE_CONTACT)
    assert state(d) is DialogState.EARLY
    assert d.id == DialogId("dlg-1", "ua1", "ua2") == response_dialog_id(ringing)
    assert [str(r.uri) for r in d.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]  # reversed
    assert d.remote_target == SipUri("192.0.2.4", "101", 5072)  # URI headers dropped
    ok = wire(make_response(uas_inv, 200, to_tag="ua2", contact=BOB_CONTACT))
    d.receive_response(ok)
    assert state(d) is DialogState.CONFIRMED
    creds = 'Digest username="100", realm="r", nonce="n", uri="sip:101@127.0.0.1", response="0"'
    ack = d.ack(ok, via("z9hG4bKack1"), headers=[("Proxy-Authorization", creds)])
    assert ack.headers.get("Proxy-Authorization") == creds  # §13.2.2.4: the INVITE's credentials
    assert (ack.method, ack.cseq.seq, ack.cseq.method) == ("ACK", 7, "ACK")
    assert ack.uri == SipUri("192.0.2.4", "101", 5072)  # loose routing: R-URI = remote target
    assert [str(r.uri) for r in ack.route] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    assert (ack.from_.tag, ack.to.tag, ack.call_id) == ("ua1", "ua2", "dlg-1")
    assert wire(ack) == ack
    assert d.ack(ok, via("z9hG4bKother")) is ack  # a retransmitted 2xx gets the same ACK
    bye = d.create_request("BYE", via=via("z9hG4bKbye"))
    assert (bye.cseq.seq, bye.cseq.method, bye.uri) == (8, "BYE", ack.uri)
    assert bye.route == ack.route
    assert "Contact" not in bye.headers
    assert state(d) is DialogState.TERMINATED  # §15.1.1
    with pytest.raises(LocalProtocolError, match="terminated"):
        d.create_request("INFO", via=via("z9hG4bKx"))


def test_uac_dialog_straight_from_2xx_and_strict_routing() -> None:
    inv = invite()
    uas_inv = Request(
        inv.method, inv.uri, inv.headers.add("Record-Route", "<sip:strict.example.com>"), inv.body
    )
    ok = wire(make_response(uas_inv, 200, to_tag="ua2", contact=BOB_CONTACT))
    d = Dialog.from_uac_response(inv, ok, ALICE_CONTACT)
    assert state(d) is DialogState.CONFIRMED
    info = d.create_request(
        "INFO", via=via("z9hG4bKi"), body=b"Signal=5\r\n", content_type="application/dtmf-relay"
    )
    # §12.2.1.1 strict routing: R-URI = first route, the remote target goes last in Route.
    assert info.uri == SipUri("strict.example.com")
    assert [str(r.uri) for r in info.route] == ["sip:101@192.0.2.4:5072"]
    assert info.content_type is not None
    assert info.body == b"Signal=5\r\n"


def test_uac_failures_end_dialogs() -> None:
    inv = invite()
    ringing = make_response(inv, 183, to_tag="ua2", contact=BOB_CONTACT)
    early = Dialog.from_uac_response(inv, ringing, ALICE_CONTACT)
    early.receive_response(make_response(inv, 486, to_tag="ua2"))
    assert state(early) is DialogState.TERMINATED
    with pytest.raises(LocalProtocolError, match="does not create a dialog"):
        Dialog.from_uac_response(inv, make_response(inv, 180), ALICE_CONTACT)
    d = Dialog.from_uac_response(
        inv, make_response(inv, 200, to_tag="ua2", contact=BOB_CONTACT), ALICE_CONTACT
    )
    info = d.create_request("INFO", via=via("z9hG4bKi2"))
    d.receive_response(make_response(info, 481, to_tag="ua2"))
    assert state(d) is DialogState.TERMINATED  # §12.2.1.2


def test_re_invite_both_ways_and_glare() -> None:
    inv = invite()
    d = Dialog.from_uac_response(
        inv, make_response(inv, 200, to_tag="ua2", contact=BOB_CONTACT), ALICE_CONTACT
    )
    reinv = d.create_request("INVITE", via=via("z9hG4bKre"), body=b"v=0\r\n", content_type="application/sdp")
    assert reinv.cseq.seq == 8
    assert reinv.contacts == [ALICE_CONTACT]
    with pytest.raises(LocalProtocolError, match="already pending"):
        d.create_request("INVITE", via=via("z9hG4bKre2"))
    # The far end sends its own re-INVITE meanwhile: glare -> 491 (§14.2).
    theirs = make_request(
        "INVITE", ALICE_CONTACT.uri, call_id="dlg-1", cseq=1, from_=d.remote, to=d.local,
        via=Via("UDP", "192.0.2.4", 5072, Params((("branch", "z9hG4bKt1"),))), contact=BOB_CONTACT,
    )  # fmt: skip
    assert request_dialog_id(theirs) == d.id
    glare = d.receive_request(theirs)
    assert glare is not None
    assert glare.status == 491
    assert glare.to.tag == "ua1"
    # Our re-INVITE is answered with a new Contact: target refresh (§12.2.1.2).
    moved = NameAddr(SipUri("192.0.2.99", "101"))
    d.receive_response(make_response(reinv, 200, to_tag="ua2", contact=moved))
    assert d.remote_target == SipUri("192.0.2.99", "101")
    assert d.ack(make_response(reinv, 200, to_tag="ua2"), via("z9hG4bKa2")).cseq.seq == 8
    # Now their re-INVITE (a higher CSeq) is accepted and refreshes the target again.
    theirs2 = make_request(
        "INVITE", ALICE_CONTACT.uri, call_id="dlg-1", cseq=2, from_=d.remote, to=d.local,
        via=Via("UDP", "192.0.2.4", 5072, Params((("branch", "z9hG4bKt2"),))), contact=BOB_CONTACT,
    )  # fmt: skip
    assert d.receive_request(theirs2) is None
    assert d.remote_target == SipUri("192.0.2.4", "101", 5072)
    busy = d.receive_request(Request("INVITE", theirs2.uri, theirs2.headers.replace("CSeq", "3 INVITE")))
    assert busy is not None
    assert (busy.status, busy.headers.get("Retry-After")) == (500, "5")  # previous one unanswered
    answer = d.response(theirs2, 200, body=b"v=0\r\n", content_type="application/sdp")
    assert answer.contacts == [ALICE_CONTACT]
    assert answer.to.tag == "ua1"
    assert (
        d.receive_request(Request("INVITE", theirs2.uri, theirs2.headers.replace("CSeq", "4 INVITE"))) is None
    )


def test_incoming_requests_cseq_order_and_bye() -> None:
    inv = invite()
    d = Dialog.from_uac_response(
        inv, make_response(inv, 200, to_tag="ua2", contact=BOB_CONTACT), ALICE_CONTACT
    )

    def theirs(method: str, seq: int) -> Request:
        return make_request(
            method, ALICE_CONTACT.uri, call_id="dlg-1", cseq=seq, from_=d.remote, to=d.local,
            via=Via("UDP", "192.0.2.4", 5072, Params((("branch", f"z9hG4bK{method}{seq}"),))),
        )  # fmt: skip

    assert d.receive_request(theirs("INFO", 10)) is None
    old = d.receive_request(theirs("INFO", 9))
    assert old is not None
    assert (old.status, old.reason) == (500, "CSeq out of order")
    bye = theirs("BYE", 11)
    assert d.receive_request(bye) is None
    assert state(d) is DialogState.TERMINATED
    ok = wire(d.response(bye, 200))
    assert (ok.status, ok.to.tag, ok.from_.tag, ok.cseq.method) == (200, "ua1", "ua2", "BYE")
    assert "Contact" not in ok.headers


def test_uas_dialog_answer_and_bye_from_callee() -> None:
    uas_inv = wire(as_received_by_uas(invite()))
    d = Dialog.from_uas_request(uas_inv, "ua2", BOB_CONTACT, local_seq=100)
    assert state(d) is DialogState.EARLY
    assert (
        d.id
        == DialogId("dlg-1", "ua2", "ua1")
        == request_dialog_id(
            Request("BYE", uas_inv.uri, uas_inv.headers.replace("To", str(uas_inv.to.with_tag("ua2"))))
        )
    )
    ringing = d.response(uas_inv, 180)
    assert ringing.to.tag == "ua2"
    assert [str(r.uri) for r in ringing.record_route] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert state(d) is DialogState.EARLY
    ok = wire(d.response(uas_inv, 200, body=b"v=0\r\n", content_type="application/sdp"))
    assert state(d) is DialogState.CONFIRMED
    assert ok.contacts == [BOB_CONTACT]
    # The UAC side builds its dialog from that 2xx and both agree on the ids.
    uac = Dialog.from_uac_response(invite(), ok, ALICE_CONTACT)
    assert (uac.id.local_tag, uac.id.remote_tag) == (d.id.remote_tag, d.id.local_tag)
    assert [str(r.uri) for r in uac.route_set] == ["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    # The callee hangs up: route set in Record-Route order, R-URI = the caller's Contact.
    bye = wire(d.create_request("BYE", via=Via("UDP", "192.0.2.4", 5072, Params((("branch", "z9hG4bKb"),)))))
    assert (bye.uri, bye.cseq.seq) == (ALICE_CONTACT.uri, 100)
    assert [str(r.uri) for r in bye.route] == ["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    assert (bye.from_.tag, bye.to.tag) == ("ua2", "ua1")
    assert uac.receive_request(bye) is None
    assert state(uac) is DialogState.TERMINATED


def test_uas_rejecting_the_initial_invite_terminates() -> None:
    uas_inv = invite()
    d = Dialog.from_uas_request(uas_inv, "ua2", BOB_CONTACT)
    busy = d.response(uas_inv, 486)
    assert busy.to.tag == "ua2"
    assert "Contact" not in busy.headers
    assert state(d) is DialogState.TERMINATED


def test_make_cancel_rfc3261_9_1() -> None:
    inv = invite()
    cancel = wire(make_cancel(inv))
    assert (cancel.method, cancel.uri, cancel.call_id) == ("CANCEL", inv.uri, inv.call_id)
    assert (cancel.cseq.seq, cancel.cseq.method) == (7, "CANCEL")
    assert (cancel.from_, cancel.to) == (inv.from_, inv.to)
    assert cancel.vias == [inv.top_via]
    assert cancel.route == inv.route
    assert cancel.body == b""


def test_forked_answer_is_another_dialog() -> None:
    inv = invite()
    d = Dialog.from_uac_response(
        inv, make_response(inv, 180, to_tag="fork1", contact=BOB_CONTACT), ALICE_CONTACT
    )
    with pytest.raises(LocalProtocolError, match="belongs to another dialog"):
        d.receive_response(make_response(inv, 200, to_tag="fork2", contact=BOB_CONTACT))
    d.receive_response(make_response(inv, 100))  # no tag: fine
    assert state(d) is DialogState.EARLY


def test_create_request_misuse() -> None:
    inv = invite()
    d = Dialog.from_uac_response(inv, make_response(inv, 200, to_tag="t", contact=BOB_CONTACT), ALICE_CONTACT)
    for method in ("ACK", "CANCEL"):
        with pytest.raises(LocalProtocolError, match="not built with create_request"):
            d.create_request(method, via=via("z9hG4bKm"))


def test_answer_retransmitter_udp_schedule_and_give_up() -> None:
    inv = invite()
    ok = make_response(inv, 200, to_tag="t")
    r = AnswerRetransmitter(ok, 0.0, reliable=False)
    times: list[tuple[float, Response | None]] = []
    while (deadline := r.next_deadline()) is not None:
        times += [(deadline, x) for x in r.handle_timeout(deadline)]
    assert [t for t, x in times if x is not None] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert times[-1] == (32.0, None)  # no ACK within 64*T1: send BYE


def test_answer_retransmitter_stops_on_ack_and_tcp_only_waits() -> None:
    ok = make_response(invite(), 200, to_tag="t")
    r = AnswerRetransmitter(ok, 0.0, reliable=False)
    assert r.handle_timeout(1.6) == [ok, ok]
    r.ack_received()
    assert r.next_deadline() is None
    assert r.acked
    tcp = AnswerRetransmitter(ok, 0.0, reliable=True)
    assert tcp.next_deadline() == 32.0
    assert tcp.handle_timeout(32.0) == [None]
    assert tcp.handle_timeout(40.0) == []


def test_dialog_ids_need_both_tags() -> None:
    inv = invite()
    assert request_dialog_id(inv) is None
    assert response_dialog_id(make_response(inv, 100)) is None
