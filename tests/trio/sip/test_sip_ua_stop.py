"""A call being left while its far end never answers the BYE, and the UA stops meanwhile (the
bridge's grace period is over): the shielded hang-up ends when the UA stops, not `grace` later
(it cannot finish anyway: no dispatcher, no timers). Under `autojump_clock`: times are virtual."""

from __future__ import annotations

import pytest
import trio.testing

import trio
from sip.calls import Answered
from sip.headers import NameAddr
from sip.message import Request, make_response
from sip.parser import parse_datagram_untrusted
from sip.transport import SipTransport
from sip.ua import SipUA
from sip.uri import parse_sip_uri

pytestmark = pytest.mark.timeout(30)

SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


async def answer_then_ignore(sock: trio.socket.SocketType, byes: list[float]) -> None:
    """200 to the INVITE, then silence; the arrival time of every BYE is noted."""
    port = sock.getsockname()[1]
    while True:
        data, addr = await sock.recvfrom(65535)
        message = parse_datagram_untrusted(data)
        if not isinstance(message, Request):
            continue
        if message.method == "INVITE":
            contact = NameAddr(parse_sip_uri(f"sip:peer@127.0.0.1:{port}"))
            answer = make_response(
                message, 200, to_tag="p", contact=contact, body=SDP, content_type="application/sdp"
            )
            await sock.sendto(bytes(answer), addr)
        elif message.method == "BYE":
            byes.append(trio.current_time())


@pytest.mark.parametrize("stop_ua", [False, True], ids=["ua-runs", "ua-stops"])
async def test_hangup_ends_when_the_ua_stops(autojump_clock: trio.testing.MockClock, stop_ua: bool) -> None:
    grace = 4.0
    byes: list[float] = []
    async with trio.open_nursery() as nursery:
        transport = SipTransport("127.0.0.1", 0, tcp=False)
        await nursery.start(transport.run)
        ua = SipUA(transport, grace=grace)
        ua_scope = trio.CancelScope()

        async def run_ua(task_status: trio.TaskStatus[SipUA]) -> None:
            with ua_scope:
                await ua.run(task_status=task_status)

        await nursery.start(run_ua)
        peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        with peer:
            nursery.start_soon(answer_then_ignore, peer, byes)
            stopped_at: list[float] = []

            async def stop_after_the_bye() -> None:
                while not byes:
                    await trio.sleep(0.01)
                await trio.sleep(1.0)
                stopped_at.append(trio.current_time())
                ua_scope.cancel()

            async with ua.call(f"sip:600@127.0.0.1:{peer.getsockname()[1]}", caller="100", sdp=SDP) as call:
                assert isinstance(await call.events.receive(), Answered)
                if stop_ua:
                    nursery.start_soon(stop_after_the_bye)
            left = trio.current_time()
            assert byes, "no BYE was sent"
            if stop_ua:
                assert stopped_at
                assert left - stopped_at[0] < 0.1  # at once (it was `grace` after the BYE)
            else:
                assert left - byes[0] == pytest.approx(grace, abs=0.1)  # the shield's own bound
            assert call.ended is not None
        nursery.cancel_scope.cancel()
