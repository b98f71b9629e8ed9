"""A whole call between two pure SIP stacks (transaction layer + dialog) over a lossy fake UDP wire.

Every message crosses as bytes through the parser. Losses are chosen so that each recovery
path runs: INVITE retransmission (Timer A), 2xx retransmission by the UAS core (§13.3.1.4),
the same ACK resent for a retransmitted 2xx (§13.2.2.4), and BYE retransmission (Timer E).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sip.dialog import AnswerRetransmitter, Dialog, DialogState, request_dialog_id, response_dialog_id
from sip.headers import NameAddr, Via
from sip.layer import LayerAction, RequestReceived, TransactionLayer
from sip.message import Request, Response, make_request
from sip.parser import parse_datagram_untrusted
from sip.transaction import AckReceived, ResponseReceived, Send, Terminated, TransactionKey
from sip.uri import Params, SipUri

A, B = ("127.0.0.1", 5090), ("127.0.0.1", 5072)
A_CONTACT = NameAddr(SipUri("127.0.0.1", "100", 5090))
B_CONTACT = NameAddr(SipUri("127.0.0.1", "101", 5072))


@dataclass
class Wire:
    """Datagrams in flight; `drop` lists (kind, n): drop the n-th datagram of that kind."""

    drop: set[tuple[str, int]]
    seen: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def carry(self, actions: list[LayerAction]) -> list[Request | Response]:
        out: list[Request | Response] = []
        for action in actions:
            if not isinstance(action, Send):
                continue
            msg = action.message
            kind = msg.method if isinstance(msg, Request) else f"{msg.status}/{msg.cseq.method}"
            n = self.seen[kind] = self.seen.get(kind, 0) + 1
            lost = (kind, n) in self.drop
            self.log.append(f"{kind}#{n}{' lost' if lost else ''}")
            if not lost:
                parsed = parse_datagram_untrusted(bytes(msg))
                assert isinstance(parsed, Request | Response)
                out.append(parsed)
        return out


def state(d: Dialog) -> DialogState:
    """Read through a function so that mypy does not narrow the state across calls."""
    return d.state


def via(host: tuple[str, int], branch: str) -> Via:
    return Via("UDP", host[0], host[1], Params((("branch", branch),)))


def test_call_with_losses_on_every_leg() -> None:
    wire = Wire(drop={("INVITE", 1), ("200/INVITE", 1), ("ACK", 1), ("BYE", 1)})
    uac, uas = TransactionLayer(), TransactionLayer()
    invite = make_request(
        "INVITE",
        SipUri("127.0.0.1", "101", 5072),
        call_id="flow-1",
        cseq=1,
        from_=NameAddr(SipUri("127.0.0.1", "100"), params=Params((("tag", "a1"),))),
        to=NameAddr(SipUri("127.0.0.1", "101")),
        via=via(A, "z9hG4bKinv1"),
        contact=A_CONTACT,
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    _, actions = uac.send_request(invite, B, 0.0, reliable=False)
    assert wire.carry(actions) == []  # the first INVITE is lost
    (inv_rx,) = wire.carry(uac.handle_timeout(0.5))  # Timer A
    assert isinstance(inv_rx, Request)

    # UAS: new INVITE -> 100 Trying (automatic), then the TU rings and answers.
    got = uas.receive(inv_rx, A, 0.51, reliable=False)
    new = got[0]
    assert isinstance(new, RequestReceived)
    skey: TransactionKey = new.key
    to_uac = wire.carry(got)
    uas_dialog = Dialog.from_uas_request(inv_rx, "b1", B_CONTACT)
    to_uac += wire.carry(uas.respond(skey, uas_dialog.response(inv_rx, 180), 0.52))
    ok = uas_dialog.response(inv_rx, 200, body=b"v=0\r\n", content_type="application/sdp")
    assert wire.carry(uas.respond(skey, ok, 0.6)) == []  # the first 200 is lost
    answer = AnswerRetransmitter(ok, 0.6, reliable=False)
    assert state(uas_dialog) is DialogState.CONFIRMED

    # UAC: 100 and 180 reach the TU; the 180 creates an early dialog.
    events = [a for m in to_uac for a in uac.receive(m, B, 0.6, reliable=False)]
    assert [a.response.status for a in events if isinstance(a, ResponseReceived)] == [100, 180]
    ringing = events[1]
    assert isinstance(ringing, ResponseReceived)
    uac_dialog = Dialog.from_uac_response(invite, ringing.response, A_CONTACT)
    assert state(uac_dialog) is DialogState.EARLY

    # The UAS core retransmits the 2xx (T1 later) through the Accepted server transaction.
    resend = answer.handle_timeout(1.1)
    assert resend == [ok]
    (ok_rx,) = wire.carry(uas.respond(skey, ok, 1.1))
    assert isinstance(ok_rx, Response)
    (delivered,) = uac.receive(ok_rx, B, 1.11, reliable=False)
    assert isinstance(delivered, ResponseReceived)
    assert response_dialog_id(delivered.response) == uac_dialog.id
    uac_dialog.receive_response(delivered.response)
    assert state(uac_dialog) is DialogState.CONFIRMED
    ack = uac_dialog.ack(delivered.response, via(A, "z9hG4bKack1"))
    assert wire.carry([Send(delivered.key, ack, B)]) == []  # the ACK is lost

    # No ACK: the UAS resends the 2xx again; the UAC answers with the very same ACK.
    assert answer.handle_timeout(2.1) == [ok]
    (ok_again,) = wire.carry(uas.respond(skey, ok, 2.1))
    assert isinstance(ok_again, Response)
    (again,) = uac.receive(ok_again, B, 2.11, reliable=False)
    assert isinstance(again, ResponseReceived)
    same_ack = uac_dialog.ack(again.response, via(A, "z9hG4bKdifferent"))
    assert same_ack is ack
    (ack_rx,) = wire.carry([Send(again.key, same_ack, B)])
    assert isinstance(ack_rx, Request)
    (acked,) = uas.receive(ack_rx, A, 2.12, reliable=False)
    assert isinstance(acked, AckReceived)  # through the Accepted transaction (RFC 6026)
    assert uas_dialog.receive_request(ack_rx) is None
    answer.ack_received()
    assert answer.next_deadline() is None

    # The caller hangs up; the first BYE is lost and Timer E resends it.
    bye = uac_dialog.create_request("BYE", via=via(A, "z9hG4bKbye1"))
    bye_key, actions = uac.send_request(bye, B, 10.0, reliable=False)
    assert wire.carry(actions) == []
    (bye_rx,) = wire.carry(uac.handle_timeout(10.5))
    assert isinstance(bye_rx, Request)
    (bye_new,) = uas.receive(bye_rx, A, 10.51, reliable=False)
    assert isinstance(bye_new, RequestReceived)
    assert request_dialog_id(bye_rx) == uas_dialog.id
    assert uas_dialog.receive_request(bye_rx) is None
    assert state(uas_dialog) is DialogState.TERMINATED
    (bye_ok,) = wire.carry(uas.respond(bye_new.key, uas_dialog.response(bye_rx, 200), 10.52))
    assert isinstance(bye_ok, Response)
    (done,) = uac.receive(bye_ok, B, 10.53, reliable=False)
    assert done == ResponseReceived(bye_key, bye_ok)

    # Everything winds down by the timers alone.
    late = uac.handle_timeout(100.0) + uas.handle_timeout(100.0)
    assert sum(isinstance(a, Terminated) for a in late) == 4  # INVITE/BYE on both sides
    assert (len(uac), len(uas)) == (0, 0)
    assert wire.log == [
        "INVITE#1 lost", "INVITE#2", "100/INVITE#1", "180/INVITE#1", "200/INVITE#1 lost", "200/INVITE#2",
        "ACK#1 lost", "200/INVITE#3", "ACK#2", "BYE#1 lost", "BYE#2", "200/BYE#1",
    ]  # fmt: skip
