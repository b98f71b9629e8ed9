"""sip.ua towards a UDP destination nothing listens on: the ICMP port unreachable ends the call
with 503 at once (RFC 3261 §18.4, §8.1.3.1), not by Timer B (64*T1 = 32 s with the default T1)."""

from __future__ import annotations

import socket

import trio
from sip.calls import Ended, TransactionTimeout
from sip.headers import NameAddr
from sip.message import make_request
from sip.transport import Address, SipTransport, TransportError
from sip.ua import SipUA
from sip.uri import Params, parse_sip_uri

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ua(nursery: trio.Nursery, t1: float = 0.5) -> SipUA:
    transport = SipTransport("127.0.0.1", 0, tcp=False)
    await nursery.start(transport.run)
    ua = SipUA(transport, t1=t1)
    await nursery.start(ua.run)
    return ua


async def test_call_to_a_closed_port_ends_503_at_once() -> None:
    """T1 = 5 s: Timer B would take 320 s, so an end within the test's limit is the ICMP error's
    (no timing assertion: the machine may be loaded)."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            ua = await _ua(nursery, t1=5.0)
            target = f"sip:600@127.0.0.1:{_closed_udp_port()}"
            async with ua.call(target, caller="100", sdp=SDP) as call:
                events = [event async for event in call.events]
            assert events == [Ended(503, "Service Unavailable", "local")]
            nursery.cancel_scope.cancel()


async def test_only_unanswered_transactions_to_that_destination_fail() -> None:
    """An OPTIONS to a closed port fails with TransportError; one to a peer that answers, sent
    at the same time, is not touched by it (it ends by its own timer here: the peer is silent)."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            ua = await _ua(nursery, t1=0.1)  # Timer F: 6.4 s
            silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await silent.bind(("127.0.0.1", 0))
            outcomes: dict[str, str] = {}

            async def options(name: str, port: int) -> None:
                uri = parse_sip_uri(f"sip:x@127.0.0.1:{port}")
                request = make_request(
                    "OPTIONS", uri, call_id=f"{name}@test", cseq=1,
                    from_=NameAddr(parse_sip_uri("sip:100@127.0.0.1"), None, Params((("tag", name),))),
                    to=NameAddr(uri), via=ua.new_via(ua.transport.default_transport),
                )  # fmt: skip
                try:
                    await ua.transact(request, Address("127.0.0.1", port))
                except TransportError:
                    outcomes[name] = "transport error"
                except TransactionTimeout:
                    outcomes[name] = "timeout"

            closed = _closed_udp_port()
            async with trio.open_nursery() as both:
                both.start_soon(options, "closed", closed)
                both.start_soon(options, "silent", silent.getsockname()[1])
                with trio.fail_after(5):  # well before the silent one's Timer F
                    while "closed" not in outcomes:
                        await trio.sleep(0.01)
                assert "silent" not in outcomes
            assert outcomes == {"closed": "transport error", "silent": "timeout"}
            silent.close()
            nursery.cancel_scope.cancel()
