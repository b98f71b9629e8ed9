"""Our UA calling SIPp UAS scenarios on loopback (direct, no proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.sip.conftest import audio_sdp, rtp_packet, sdp_media_address, udp_socket
from tests.support.sip_peers import SIPP_PORT, SippUas

import trio
from sip.calls import Answered, CallEvent, Ended, Ringing, Trying
from sip.ua import SipUA

pytestmark = [pytest.mark.peers, pytest.mark.timeout(30)]
TARGET = f"sip:uas@127.0.0.1:{SIPP_PORT}"


async def _until(call_events: trio.MemoryReceiveChannel[CallEvent], kind: type) -> list[CallEvent]:
    seen: list[CallEvent] = []
    async for event in call_events:
        seen.append(event)
        if isinstance(event, kind | Ended):
            break
    return seen


async def test_echo_answered_rtp_echoed_and_bye(ua: SipUA, tmp_path: Path) -> None:
    with SippUas("uas_echo", tmp_path) as uas, trio.fail_after(10):
        rtp = await udp_socket()
        offer = audio_sdp(rtp.getsockname()[1])
        async with ua.call(TARGET, caller="100", sdp=offer) as call:
            seen = await _until(call.events, Answered)
            assert [type(e) for e in seen] == [Trying, Ringing, Answered]
            assert seen[1] == Ringing(180, "Ringing")
            answer = seen[-1]
            assert isinstance(answer, Answered)
            host, port, pts = sdp_media_address(answer.sdp)
            assert pts == [0, 8, 101]
            for seq in range(5):
                await rtp.sendto(rtp_packet(seq), (host, port))
            for seq in range(5):
                data = await rtp.recv(2048)
                assert data == rtp_packet(seq)
            await call.hangup()
            rest = [e async for e in call.events]
            assert rest == [Ended(200, "Hangup", "local")]
        rtp.close()
        assert await trio.to_thread.run_sync(uas.wait, 5) == 0, uas.errors()


async def test_busy_ends_486(ua: SipUA, tmp_path: Path) -> None:
    with SippUas("uas_busy", tmp_path) as uas, trio.fail_after(10):
        async with ua.call(TARGET, caller="100", sdp=audio_sdp(4000)) as call:
            seen = [e async for e in call.events]
        assert seen == [Trying(), Ended(486, "Busy Here", "remote")]
        assert await trio.to_thread.run_sync(uas.wait, 5) == 0, uas.errors()
