"""RTP bleed (fixed): a sprayer of the media range during call set-up must not capture the SIP leg.

Before the fix `rtp.media` latched the SIP leg (symmetric RTP, RFC 4961) onto the source of the
first datagram that reached the SIP-side RTP/RTCP port after an answer, whatever its address and
contents: the phone's own RTP was then dropped and the sprayer's relayed (measured: 4 of 201
echoed packets came back). Now (`rtp.latch`) only valid RTP with a negotiated payload type
latches, from the SDP's IP at once, from another IP only after a learning run of consecutive
packets and only while nothing from the SDP's IP has arrived; the sprayer (127.0.0.30, random
sequence numbers) never completes one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tests.e2e.conftest import RTP_HIGH, RTP_LOW
from tests.hostile.hostile_support import ECHO, PASSWORD, hostile_bridge
from tests.support.synthetic_browser import open_synthetic_browser

import trio

pytestmark = [pytest.mark.timeout(60)]


async def test_a_sprayer_during_call_setup_does_not_capture_the_sip_leg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(40):
        async with hostile_bridge(tmp_path, monkeypatch) as bridge, trio.open_nursery() as nursery:
            flood = [
                sys.executable, "-m", "tests.hostile.flood", "--rate", "8000", "--seconds", "6",
                f"127.0.0.1:{RTP_LOW}-{RTP_HIGH}",
            ]  # fmt: skip
            nursery.start_soon(
                lambda: trio.run_process(flood, capture_stdout=True, cwd=Path(__file__).parents[2])
            )
            await trio.sleep(0.5)
            async with open_synthetic_browser(bridge.wss) as page:
                await page.call("100", PASSWORD, ECHO)
                await page.wait_for("answer", timeout=10)
                with trio.move_on_after(4):
                    await page.wait_media(to_receive=150, timeout=10)
                sent, got = page.sent_packets, page.received.packets
                await page.hangup()
            print(f"RTP latch under a media-range spray: {got} of {sent} echoed packets came back")
            assert got >= 0.8 * sent, f"{got} of {sent} echoed packets came back: the SIP leg was captured"
