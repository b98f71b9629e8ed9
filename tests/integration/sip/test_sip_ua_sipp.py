"""Our UA calling SIPp UAS scenarios on loopback (direct, no proxy)."""

from __future__ import annotations

from collections.abc import AsyncIterable
from pathlib import Path

import pytest
from tests.integration.sip.conftest import audio_sdp, rtp_packet, sdp_media_address, udp_socket
from tests.support.sip_peers import SIPP_PORT, SippUas

import trio
from sip.calls import Answered, CallEvent, Ended, Ringing, Trying
from sip.ua import SipUA

pytestmark = [pytest.mark.peers, pytest.mark.timeout(30)]
TARGET = f"sip:uas@127.0.0.1:{SIPP_PORT}"


async def _until(call_events: AsyncIterable[CallEvent], kind: type) -> list[CallEvent]:
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


async def test_ring_then_answer_after_delay(ua: SipUA, tmp_path: Path) -> None:
    with SippUas("uas_ring_delay", tmp_path, delay_ms=700) as uas, trio.fail_after(10):
        async with ua.call(TARGET, caller="100", sdp=audio_sdp(4000)) as call:
            t0 = trio.current_time()
            seen = await _until(call.events, Answered)
            assert [type(e) for e in seen] == [Trying, Ringing, Answered]
            assert trio.current_time() - t0 >= 0.6
        # leaving the context without hangup sends BYE
        assert await trio.to_thread.run_sync(uas.wait, 5) == 0, uas.errors()
        assert "BYE sip:" in uas.messages()


async def test_ring_then_caller_cancels(ua: SipUA, tmp_path: Path) -> None:
    with SippUas("uas_ring_cancel", tmp_path) as uas, trio.fail_after(10):
        async with ua.call(TARGET, caller="100", sdp=audio_sdp(4000)) as call:
            seen = await _until(call.events, Ringing)
            assert [type(e) for e in seen] == [Trying, Ringing]
            await call.hangup()
            assert [e async for e in call.events] == [Ended(487, "Request Terminated", "local")]
        assert await trio.to_thread.run_sync(uas.wait, 5) == 0, uas.errors()
        assert "CANCEL sip:" in uas.messages()


async def test_cancel_on_context_exit_while_ringing(ua: SipUA, tmp_path: Path) -> None:
    with SippUas("uas_ring_cancel", tmp_path) as uas, trio.fail_after(10):
        async with ua.call(TARGET, caller="100", sdp=audio_sdp(4000)) as call:
            await _until(call.events, Ringing)
        assert call.ended == Ended(487, "Request Terminated", "local")
        assert await trio.to_thread.run_sync(uas.wait, 5) == 0, uas.errors()


async def test_callee_sends_bye(ua: SipUA, tmp_path: Path) -> None:
    with SippUas("uas_bye_after", tmp_path, delay_ms=500) as uas, trio.fail_after(10):
        async with ua.call(TARGET, caller="100", sdp=audio_sdp(4000)) as call:
            seen = [e async for e in call.events]
            assert [type(e) for e in seen] == [Ringing, Answered, Ended]
            assert seen[-1] == Ended(200, "Remote hangup", "remote")
        assert await trio.to_thread.run_sync(uas.wait, 5) == 0, uas.errors()


async def test_lost_ack_is_resent_on_200_retransmission(ua: SipUA, tmp_path: Path) -> None:
    acks: list[bytes] = []

    def lose_first_ack(data: bytes, _dest: object) -> bool:
        if data.startswith(b"ACK "):
            acks.append(data)
            return len(acks) > 1
        return True

    ua.transport.send_filter = lose_first_ack
    with SippUas("uas_ack_lost", tmp_path) as uas, trio.fail_after(10):
        async with ua.call(TARGET, caller="100", sdp=audio_sdp(4000)) as call:
            await _until(call.events, Answered)
            with trio.move_on_after(5):
                while len(acks) < 2:
                    await trio.sleep(0.05)
            assert len(acks) == 2
            assert acks[0] == acks[1]  # the same ACK again (RFC 3261 §13.2.2.4)
            await call.hangup()
        assert await trio.to_thread.run_sync(uas.wait, 5) == 0, uas.errors()
        assert uas.messages().count("SIP/2.0 200 OK\n") + uas.messages().count("SIP/2.0 200 OK\r\n") >= 3


async def test_context_left_by_cancellation_while_ringing_cancels_at_once(ua: SipUA, tmp_path: Path) -> None:
    """Cancelled from outside while ringing: the call's response reader outlives the cancellation,
    so the CANCEL's 487 is read and ACKed at once instead of waiting out the UA's grace (4 s)."""
    with SippUas("uas_ring_cancel", tmp_path) as uas, trio.fail_after(10):
        with trio.CancelScope() as outer:
            async with ua.call(TARGET, caller="100", sdp=audio_sdp(4000)) as call:
                await _until(call.events, Ringing)
                cancelled_at = trio.current_time()
                outer.cancel()
                await trio.sleep_forever()
        assert outer.cancelled_caught
        assert trio.current_time() - cancelled_at < 1.0
        assert call.ended == Ended(487, "Request Terminated", "local")
        assert await trio.to_thread.run_sync(uas.wait, 5) == 0, uas.errors()
        trace = uas.messages()
        assert "CANCEL sip:" in trace
        assert "SIP/2.0 487 Request Terminated" in trace
        assert "ACK sip:" in trace
