"""The four transaction machines and the layer, driven by `now` values (RFC 3261 §17, RFC 6026)."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import pytest

from sip.errors import LocalProtocolError
from sip.headers import NameAddr, Via
from sip.layer import RequestReceived, StrayResponse, TransactionLayer, client_key, server_key
from sip.message import Request, Response, make_request, make_response
from sip.parser import parse_datagram_untrusted
from sip.timers import Timer, TimerConfig
from sip.transaction import (
    AckReceived,
    InviteClientState,
    InviteClientTransaction,
    InviteServerState,
    InviteServerTransaction,
    NonInviteClientState,
    NonInviteClientTransaction,
    NonInviteServerState,
    NonInviteServerTransaction,
    ResponseReceived,
    Send,
    Terminated,
    Timeout,
    TransportFailed,
    TxAction,
)
from sip.uri import Params, SipUri

CFG = TimerConfig()
DEST = ("127.0.0.1", 5070, "udp")


def request(method: str, branch: str = "z9hG4bK1", cseq: int = 1) -> Request:
    return make_request(
        method,
        SipUri("127.0.0.1", "101"),
        call_id="call-1",
        cseq=cseq,
        from_=NameAddr(SipUri("127.0.0.1", "100"), params=Params((("tag", "ft"),))),
        to=NameAddr(SipUri("127.0.0.1", "101")),
        via=Via("UDP", "127.0.0.1", 5090, Params((("branch", branch), ("rport", None)))),
        route=[NameAddr(SipUri("127.0.0.1", port=5070, params=Params((("lr", None),))))],
    )


def state(tx: InviteClientTransaction | InviteServerTransaction) -> Enum:
    """The state, read through a function so that mypy does not narrow it across calls."""
    return tx.state


def sends(actions: list[TxAction]) -> list[Request | Response]:
    return [a.message for a in actions if isinstance(a, Send)]


def run_until(tx: InviteClientTransaction | NonInviteClientTransaction | InviteServerTransaction
              | NonInviteServerTransaction, end: float) -> list[tuple[float, TxAction]]:  # fmt: skip
    """Call handle_timeout at each deadline up to `end`; return (time, action) pairs."""
    out: list[tuple[float, TxAction]] = []
    while (deadline := tx.next_deadline()) is not None and deadline <= end:
        out += [(deadline, a) for a in tx.handle_timeout(deadline)]
    return out


def test_timer_table() -> None:
    assert [CFG.initial(t, False) for t in Timer] == [0.5, 32, 32, 0.5, 32, 0.5, 32, 5, 32, 5, 32, 32]
    assert [CFG.initial(t, True) for t in Timer] == [0, 32, 0, 0, 32, 0, 32, 0, 0, 0, 32, 32]
    fast = TimerConfig(t1=0.1, t2=0.4, t4=1.0)
    assert fast.initial(Timer.B, False) == pytest.approx(6.4)
    assert fast.initial(Timer.D, False) == 32.0  # at least 32 s
    assert CFG.next_interval(Timer.A, 16) == 32
    assert CFG.next_interval(Timer.E, 2) == 4
    assert CFG.next_interval(Timer.G, 4) == 4


def test_invite_client_udp_no_response_retransmits_then_timer_b() -> None:
    inv = request("INVITE")
    tx = InviteClientTransaction(client_key(inv), inv, DEST, False, CFG)
    assert sends(tx.start(0.0)) == [inv]
    events = run_until(tx, 100.0)
    retransmits = [t for t, a in events if isinstance(a, Send)]
    assert retransmits == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # intervals 0.5, 1, 2, 4, 8, 16
    assert [(t, type(a).__name__) for t, a in events if not isinstance(a, Send)] == [
        (32.0, "Timeout"),
        (32.0, "Terminated"),
    ]
    assert isinstance(events[-2][1], Timeout)
    assert events[-2][1].timer is Timer.B
    assert tx.state is InviteClientState.TERMINATED
    assert tx.next_deadline() is None
    assert tx.receive(make_response(inv, 200, to_tag="x"), 40.0) == []


def test_invite_client_late_handle_timeout_replays_the_schedule() -> None:
    inv = request("INVITE")
    tx = InviteClientTransaction(client_key(inv), inv, DEST, False, CFG)
    tx.start(10.0)
    actions = tx.handle_timeout(13.6)  # due: 10.5, 11.5, 13.5
    assert len(sends(actions)) == 3
    assert tx.next_deadline() == 17.5


def test_invite_client_tcp_no_retransmissions() -> None:
    inv = request("INVITE")
    tx = InviteClientTransaction(client_key(inv), inv, DEST, True, CFG)
    tx.start(0.0)
    assert tx.next_deadline() == 32.0
    events = run_until(tx, 100.0)
    assert [type(a).__name__ for _, a in events] == ["Timeout", "Terminated"]


def test_invite_client_provisional_then_busy_sends_ack_and_waits_timer_d() -> None:
    inv = request("INVITE")
    key = client_key(inv)
    tx = InviteClientTransaction(key, inv, DEST, False, CFG)
    tx.start(0.0)
    ringing = make_response(inv, 180, to_tag="tt")
    assert tx.receive(ringing, 0.2) == [ResponseReceived(key, ringing)]
    assert tx.state is InviteClientState.PROCEEDING
    assert run_until(tx, 33.0) == []  # Timer A stopped; Timer B does not fire in Proceeding
    busy = make_response(inv, 486, to_tag="tt")
    actions = tx.receive(busy, 40.0)
    (ack,) = sends(actions)
    assert actions[1] == ResponseReceived(key, busy)
    assert isinstance(ack, Request)
    # §17.1.1.3: same Request-URI, Call-ID, From, CSeq number, Route; To of the response; one Via.
    assert (ack.method, ack.uri, ack.call_id, ack.from_, ack.cseq.seq, ack.cseq.method) == (
        "ACK", inv.uri, inv.call_id, inv.from_, 1, "ACK",
    )  # fmt: skip
    assert ack.to.tag == "tt"
    assert ack.vias == [inv.top_via]
    assert ack.route == inv.route
    assert parse_datagram_untrusted(bytes(ack)) == ack
    assert state(tx) is InviteClientState.COMPLETED
    assert sends(tx.receive(busy, 41.0)) == [ack]  # retransmitted 486: ACK again, TU not told
    assert len(tx.receive(busy, 41.0)) == 1
    assert tx.next_deadline() == 72.0  # Timer D = 32 s
    assert [type(a).__name__ for _, a in run_until(tx, 100)] == ["Terminated"]


def test_invite_client_busy_over_tcp_terminates_at_once() -> None:
    inv = request("INVITE")
    tx = InviteClientTransaction(client_key(inv), inv, DEST, True, CFG)
    tx.start(0.0)
    actions = tx.receive(make_response(inv, 603, to_tag="t"), 1.0)
    assert [type(a).__name__ for a in actions] == ["Send", "ResponseReceived", "Terminated"]


def test_invite_client_2xx_accepted_state_rfc6026() -> None:
    inv = request("INVITE")
    key = client_key(inv)
    tx = InviteClientTransaction(key, inv, DEST, False, CFG)
    tx.start(0.0)
    ok = make_response(inv, 200, to_tag="tt")
    assert tx.receive(ok, 0.3) == [ResponseReceived(key, ok)]
    assert tx.state is InviteClientState.ACCEPTED
    assert tx.receive(ok, 1.0) == [ResponseReceived(key, ok)]  # retransmissions reach the TU
    assert tx.receive(make_response(inv, 180), 1.1) == []
    assert tx.next_deadline() == pytest.approx(32.3)  # Timer M
    assert [type(a).__name__ for _, a in run_until(tx, 40)] == ["Terminated"]


def test_non_invite_client_udp_retransmits_capped_at_t2_then_timer_f() -> None:
    opt = request("OPTIONS")
    tx = NonInviteClientTransaction(client_key(opt), opt, DEST, False, CFG)
    tx.start(0.0)
    events = run_until(tx, 100.0)
    retransmits = [t for t, a in events if isinstance(a, Send)]
    assert retransmits == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert [(t, type(a).__name__) for t, a in events if not isinstance(a, Send)] == [
        (32.0, "Timeout"),
        (32.0, "Terminated"),
    ]


def test_non_invite_client_proceeding_retransmits_every_t2_then_completes() -> None:
    bye = request("BYE")
    key = client_key(bye)
    tx = NonInviteClientTransaction(key, bye, DEST, False, CFG)
    tx.start(0.0)
    tx.handle_timeout(0.5)  # first retransmission, next E at 1.5
    trying = make_response(bye, 100)
    assert tx.receive(trying, 0.6) == [ResponseReceived(key, trying)]
    assert tx.state is NonInviteClientState.PROCEEDING
    events = run_until(tx, 10.0)
    assert [t for t, a in events if isinstance(a, Send)] == [1.5, 5.5, 9.5]
    ok = make_response(bye, 200)
    assert tx.receive(ok, 10.0) == [ResponseReceived(key, ok)]
    assert tx.receive(ok, 10.5) == []  # absorbed in Completed
    assert tx.next_deadline() == 15.0  # Timer K = T4
    assert [type(a).__name__ for _, a in run_until(tx, 20)] == ["Terminated"]


def test_non_invite_client_tcp_final_terminates_at_once() -> None:
    reg = request("REGISTER")
    tx = NonInviteClientTransaction(client_key(reg), reg, DEST, True, CFG)
    tx.start(0.0)
    assert tx.next_deadline() == 32.0  # only Timer F
    actions = tx.receive(make_response(reg, 401), 0.1)
    assert [type(a).__name__ for a in actions] == ["ResponseReceived", "Terminated"]


def test_invite_server_busy_retransmits_until_ack() -> None:
    inv = request("INVITE")
    key = server_key(inv)
    tx = InviteServerTransaction(key, inv, DEST, False, CFG)
    trying = make_response(inv, 100)
    assert sends(tx.start(0.0, trying)) == [trying]
    assert sends(tx.receive_request(inv, 0.1)) == [trying]  # retransmitted INVITE: last response
    ringing = make_response(inv, 180, to_tag="s")
    assert sends(tx.respond(ringing, 0.2)) == [ringing]
    assert sends(tx.receive_request(inv, 0.3)) == [ringing]
    busy = make_response(inv, 486, to_tag="s")
    assert sends(tx.respond(busy, 1.0)) == [busy]
    assert tx.state is InviteServerState.COMPLETED
    assert sends(tx.receive_request(inv, 1.1)) == [busy]
    events = run_until(tx, 9.0)
    assert [t for t, a in events if isinstance(a, Send)] == [1.5, 2.5, 4.5, 8.5]  # G: 0.5, 1, 2, 4 (T2)
    ack = Request("ACK", inv.uri, inv.headers.replace("CSeq", "1 ACK"))
    assert tx.receive_request(ack, 9.5) == []
    assert state(tx) is InviteServerState.CONFIRMED
    assert tx.receive_request(ack, 9.6) == []  # absorbed
    assert tx.next_deadline() == 14.5  # Timer I = T4
    assert [type(a).__name__ for _, a in run_until(tx, 20)] == ["Terminated"]


def test_invite_server_timer_h_without_ack() -> None:
    inv = request("INVITE")
    tx = InviteServerTransaction(server_key(inv), inv, DEST, False, CFG)
    tx.start(0.0, None)
    tx.respond(make_response(inv, 500, to_tag="s"), 0.0)
    events = run_until(tx, 100)
    assert len([a for _, a in events if isinstance(a, Send)]) == 10  # G at 0.5,1.5,3.5,7.5,11.5..31.5
    assert [(t, type(a).__name__) for t, a in events if not isinstance(a, Send)] == [
        (32.0, "Timeout"),
        (32.0, "Terminated"),
    ]


def test_invite_server_tcp_final_no_retransmit_and_ack_terminates() -> None:
    inv = request("INVITE")
    tx = InviteServerTransaction(server_key(inv), inv, DEST, True, CFG)
    tx.start(0.0, None)
    tx.respond(make_response(inv, 404, to_tag="s"), 0.0)
    assert tx.next_deadline() == 32.0  # only Timer H
    ack = Request("ACK", inv.uri, inv.headers.replace("CSeq", "1 ACK"))
    assert [type(a).__name__ for a in tx.receive_request(ack, 1.0)] == ["Terminated"]


def test_invite_server_2xx_accepted_state() -> None:
    inv = request("INVITE")
    key = server_key(inv)
    tx = InviteServerTransaction(key, inv, DEST, False, CFG)
    tx.start(0.0, None)
    ok = make_response(inv, 200, to_tag="s")
    assert sends(tx.respond(ok, 1.0)) == [ok]
    assert tx.state is InviteServerState.ACCEPTED
    assert tx.receive_request(inv, 1.2) == []  # INVITE retransmission absorbed (RFC 6026 §7.1)
    assert sends(tx.respond(ok, 1.5)) == [ok]  # the TU retransmits its 2xx through the transaction
    ack = Request("ACK", inv.uri, inv.headers.replace("CSeq", "1 ACK"))
    assert tx.receive_request(ack, 2.0) == [AckReceived(key, ack)]
    with pytest.raises(LocalProtocolError, match="cannot send 486"):
        tx.respond(make_response(inv, 486), 2.0)
    assert tx.next_deadline() == 33.0  # Timer L
    assert [type(a).__name__ for _, a in run_until(tx, 40)] == ["Terminated"]


def test_non_invite_server() -> None:
    bye = request("BYE")
    tx = NonInviteServerTransaction(server_key(bye), bye, DEST, False, CFG)
    assert tx.receive_request(bye, 0.1) == []  # Trying: absorbed
    trying = make_response(bye, 100)
    assert sends(tx.respond(trying, 0.2)) == [trying]
    assert sends(tx.receive_request(bye, 0.3)) == [trying]
    ok = make_response(bye, 200, to_tag="s")
    assert sends(tx.respond(ok, 1.0)) == [ok]
    assert tx.state is NonInviteServerState.COMPLETED
    assert sends(tx.receive_request(bye, 2.0)) == [ok]
    with pytest.raises(LocalProtocolError):
        tx.respond(ok, 2.0)
    assert tx.next_deadline() == 33.0  # Timer J = 64*T1
    assert [type(a).__name__ for _, a in run_until(tx, 40)] == ["Terminated"]
    over_tcp = NonInviteServerTransaction(server_key(bye), bye, DEST, True, CFG)
    assert [type(a).__name__ for a in over_tcp.respond(ok, 0.0)] == ["Send", "Terminated"]


def test_transport_error_terminates() -> None:
    inv = request("INVITE")
    tx = InviteClientTransaction(client_key(inv), inv, DEST, False, CFG)
    tx.start(0.0)
    assert tx.transport_error(0.1) == [TransportFailed(tx.key), Terminated(tx.key)]
    assert tx.transport_error(0.2) == []


# --- the layer ---------------------------------------------------------------------------------


def wire(actions: Sequence[object]) -> list[Request | Response]:
    """What went on the wire, through bytes and the parser (as the edge would)."""
    out = []
    for a in actions:
        if isinstance(a, Send):
            msg = parse_datagram_untrusted(bytes(a.message))
            assert isinstance(msg, Request | Response)
            out.append(msg)
    return out


def test_layer_pair_invite_busy_over_udp_with_loss() -> None:
    uac, uas = TransactionLayer(), TransactionLayer()
    inv = request("INVITE", "z9hG4bKpair")
    key, actions = uac.send_request(inv, DEST, 0.0, reliable=False)
    (first,) = wire(actions)
    # The first INVITE is lost; the retransmission at 0.5 arrives.
    (again,) = wire(uac.handle_timeout(0.5))
    assert isinstance(again, Request)
    got = uas.receive(again, "uac", 0.55, reliable=False)
    assert isinstance(got[0], RequestReceived)
    skey = got[0].key
    assert skey.server
    assert skey.sent_by == ("127.0.0.1", 5090)
    (trying,) = wire(got[1:])
    assert isinstance(trying, Response)
    assert trying.status == 100
    assert [type(a).__name__ for a in uac.receive(trying, "uas", 0.6, reliable=False)] == ["ResponseReceived"]
    assert uas.receive(first, "uac", 0.7, reliable=False)[0] == Send(skey, trying, "uac")  # late duplicate
    (busy,) = wire(uas.respond(skey, make_response(again, 486, to_tag="b"), 1.0))
    acts = uac.receive(busy, "uas", 1.1, reliable=False)
    (ack,) = wire(acts)
    assert isinstance(ack, Request)
    assert ack.method == "ACK"
    assert uas.receive(ack, "uac", 1.2, reliable=False) == []
    assert len(uas) == 1  # Confirmed, Timer I running
    assert [type(a).__name__ for a in uas.handle_timeout(6.2)] == ["Terminated"]
    assert len(uas) == 0
    assert uac.next_deadline() == pytest.approx(33.1)  # Timer D
    assert [type(a).__name__ for a in uac.handle_timeout(40)] == ["Terminated"]
    assert len(uac) == 0
    assert uac.get(key) is None


def test_layer_cancel_matching_and_stray_responses() -> None:
    uas = TransactionLayer(trying=False)
    inv = request("INVITE", "z9hG4bKc1")
    (new,) = uas.receive(inv, "a", 0.0, reliable=True)
    assert isinstance(new, RequestReceived)
    cancel = make_request(
        "CANCEL", inv.uri, call_id=inv.call_id, cseq=1, from_=inv.from_, to=inv.to, via=inv.top_via
    )
    (got,) = uas.receive(cancel, "a", 0.1, reliable=True)
    assert isinstance(got, RequestReceived)
    assert got.cancels == new.key
    assert got.key != new.key
    other = make_request("CANCEL", inv.uri, call_id="x", cseq=1, from_=inv.from_, to=inv.to,
                         via=Via("UDP", "h", None, Params((("branch", "z9hG4bKnone"),))))  # fmt: skip
    (nomatch,) = uas.receive(other, "a", 0.2, reliable=True)
    assert isinstance(nomatch, RequestReceived)
    assert nomatch.cancels is None
    uas.respond(got.key, make_response(cancel, 200, to_tag="t"), 0.2)
    assert [type(a).__name__ for a in uas.respond(new.key, make_response(inv, 487, to_tag="t"), 0.2)] == [
        "Send"
    ]
    ack = Request("ACK", inv.uri, inv.headers.replace("CSeq", "1 ACK"))
    assert [type(a).__name__ for a in uas.receive(ack, "a", 0.3, reliable=True)] == ["Terminated"]
    # An ACK for a 2xx has a new branch: no transaction, it goes to the TU.
    ack2 = Request(
        "ACK", inv.uri, inv.headers.replace("Via", "SIP/2.0/UDP h;branch=z9hG4bKack").replace("CSeq", "1 ACK")
    )
    assert uas.receive(ack2, "a", 0.4, reliable=True) == [AckReceived(None, ack2)]
    ok = make_response(inv, 200, to_tag="t")
    assert TransactionLayer().receive(ok, "b", 0.0, reliable=False) == [StrayResponse(ok, "b")]
    two_vias = Response(200, "OK", ok.headers.prepend("Via", "SIP/2.0/UDP proxy;branch=z9hG4bKp"))
    assert TransactionLayer().receive(two_vias, "b", 0.0, reliable=False) == []  # §8.1.3.3


def test_layer_misuse_and_rfc2543_keys() -> None:
    layer = TransactionLayer()
    inv = request("INVITE")
    layer.send_request(inv, DEST, 0.0, reliable=False)
    with pytest.raises(LocalProtocolError, match="already exists"):
        layer.send_request(inv, DEST, 0.0, reliable=False)
    with pytest.raises(LocalProtocolError, match="ACK is sent without a transaction"):
        layer.send_request(Request("ACK", inv.uri, inv.headers.replace("CSeq", "1 ACK")), DEST, 0.0, False)
    with pytest.raises(LocalProtocolError, match="no server transaction"):
        layer.respond(server_key(inv), make_response(inv, 200), 0.0)
    old = Request(
        "OPTIONS",
        inv.uri,
        inv.headers.replace("Via", "SIP/2.0/UDP old.example.com").replace("CSeq", "5 OPTIONS"),
    )
    k1 = server_key(old)
    assert k1.branch.startswith("2543:call-1:ft:5:old.example.com")
    assert layer.receive(Response(200, "OK", inv.headers.remove("Via")), "x", 0.0, False) == []
    assert layer.transport_error(k1, 0.0) == []
    assert [type(a).__name__ for a in layer.transport_error(client_key(inv), 0.0)] == [
        "TransportFailed",
        "Terminated",
    ]
    assert len(layer) == 0
