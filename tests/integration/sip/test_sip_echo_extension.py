"""The echo extension (bridge.echo) called by our UA: SDP answer, RTP/RTCP echoed, BYE, 404, 488."""

from __future__ import annotations

import pytest
from tests.integration.sip.conftest import audio_sdp, rtp_packet, sdp_media_address, udp_socket

import trio
from bridge.echo import EchoExtension, answer_sdp, run_echo_extension
from sip.calls import Answered, Ended
from sip.ua import SipUA

pytestmark = pytest.mark.timeout(20)


def test_answer_picks_first_g711_and_telephone_event() -> None:
    offer = audio_sdp(5000, pts=(8, 0, 101))
    answer = answer_sdp(offer, host="127.0.0.1", port=6000, session_id=1)
    assert answer is not None
    text = answer.decode()
    assert "m=audio 6000 RTP/AVP 8 101\r\n" in text
    assert "a=rtpmap:8 PCMA/8000\r\n" in text
    assert "a=fmtp:101 0-16\r\n" in text
    assert "c=IN IP4 127.0.0.1\r\n" in text


@pytest.mark.parametrize(
    "offer",
    [
        b"",
        b"\xff\xfe",
        b"v=0\r\nm=audio 5000 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n",
        b"m=video 1 RTP/AVP 0\r\n",
        b"m=audio 5000 RTP/AVP 0\r\na=rtpmap:0 opus/48000\r\n",
    ],
)
def test_answer_refuses_offers_without_g711(offer: bytes) -> None:
    assert answer_sdp(offer, host="127.0.0.1", port=6000, session_id=1) is None


async def test_echo_extension_answers_and_echoes(ua: SipUA, nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        echo: EchoExtension = await nursery.start(run_echo_extension)
        assert echo.uri == f"sip:600@127.0.0.1:{echo.address.port}"
        rtp = await udp_socket()
        async with ua.call(echo.uri, caller="100", sdp=audio_sdp(rtp.getsockname()[1])) as call:
            answered = None
            async for event in call.events:
                if isinstance(event, Answered | Ended):
                    answered = event
                    break
            assert isinstance(answered, Answered), answered
            host, port, pts = sdp_media_address(answered.sdp)
            assert pts == [0, 101]
            for seq in range(10):
                await rtp.sendto(rtp_packet(seq), (host, port))
            await rtp.sendto(b"not rtp", (host, port))  # dropped
            got = [await rtp.recv(2048) for _ in range(10)]
            assert got == [rtp_packet(seq) for seq in range(10)]
            rtcp = await udp_socket()
            rr = bytes([0x81, 201, 0, 1]) + b"\x00\x00\x12\x34"  # an empty RTCP RR
            await rtcp.sendto(rr, (host, port + 1))
            assert await rtcp.recv(2048) == rr
            rtcp.close()
            await call.hangup()
        assert call.ended == Ended(200, "Hangup", "local")
        rtp.close()


async def test_echo_extension_other_number_404_and_bad_offer_488(ua: SipUA, nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        echo: EchoExtension = await nursery.start(run_echo_extension, "601")
        target = f"sip:999@127.0.0.1:{echo.address.port}"
        async with ua.call(target, caller="100", sdp=audio_sdp(4000)) as call:
            seen = [e async for e in call.events]
        assert seen[-1] == Ended(404, "Not Found", "remote")
        async with ua.call(echo.uri, caller="100", sdp=b"v=0\r\nm=audio 4000 RTP/AVP 9\r\n") as call:
            seen = [e async for e in call.events]
        assert seen[-1] == Ended(488, "Not Acceptable Here", "remote")
