"""Garbage at the media ports and the SIP port during a live call (echo extension, synthetic browser).

The page (tests/support/synthetic_browser.py: ICE, DTLS-SRTP, 50 packets/s of PCMU from 127.0.0.1)
calls the echo extension, which sends every packet back. Once audio flows, a flooder process
(tests/hostile/flood.py, from 127.0.0.30) sprays FLOOD_RATE garbage datagrams/s for FLOOD_SECONDS
over the whole media port range (the call's browser-facing port and its SIP-side RTP/RTCP ports
among them) and the SIP port. The call must survive, lose (almost) nothing of its echoed audio,
and leave no descriptor or memory behind. Run inside scripts/netns_run.sh (the CI does).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from tests.e2e.conftest import RTP_HIGH, RTP_LOW
from tests.hostile.flood import shapes
from tests.hostile.hostile_support import ECHO, PASSWORD, SIP_PORT, Gauges, hostile_bridge
from tests.support.synthetic_browser import open_synthetic_browser

import trio

pytestmark = [pytest.mark.timeout(60)]

FLOOD_RATE = 10000
FLOOD_SECONDS = 3.0
MAX_LOSS = 0.05  # echoed packets missing while the flood runs, as a fraction of those sent


async def test_live_call_survives_a_garbage_flood_at_media_and_sip_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(40):
        async with hostile_bridge(tmp_path, monkeypatch) as bridge:
            gauges = Gauges.now()
            async with open_synthetic_browser(bridge.wss) as page:
                await page.call("100", PASSWORD, ECHO)
                await page.wait_for("answer", timeout=10)
                await page.wait_media(to_receive=25, to_send=25, timeout=10)
                await trio.sleep(0.5)
                sent0, got0, lost0 = page.sent_packets, page.received.packets, page.received.lost
                fail0 = page.received.srtp_failures
                flood = await trio.run_process(
                    [
                        sys.executable, "-m", "tests.hostile.flood",
                        "--rate", str(FLOOD_RATE), "--seconds", str(FLOOD_SECONDS),
                        f"127.0.0.1:{RTP_LOW}-{RTP_HIGH}", f"127.0.0.1:{SIP_PORT}",
                    ],
                    capture_stdout=True,
                    cwd=Path(__file__).parents[2],
                )  # fmt: skip
                await trio.sleep(0.3)  # the last echoes of the flood window come back
                sent = page.sent_packets - sent0
                got = page.received.packets - got0
                gaps = page.received.lost - lost0
                stats = json.loads(flood.stdout)
                assert page.hangup_message is None, page.hangup_message
                # Still a call after the flood: audio keeps coming back.
                await page.wait_media(to_receive=page.received.packets + 10, timeout=5)
                await page.hangup()
                hangup = await page.wait_hangup()
            loss = max(0.0, 1 - got / sent)
            print(
                f"flood {stats['sent']} datagrams in {stats['seconds']} s ({stats['rate']}/s) over "
                f"{RTP_HIGH - RTP_LOW + 2} ports: page sent {sent}, got {got} back "
                f"(loss {100 * loss:.1f} %, {gaps} sequence gaps, "
                f"{page.received.srtp_failures - fail0} SRTP failures); hangup {hangup.code}"
            )
            gauges.report("media flood")
            assert stats["sent"] >= 0.8 * FLOOD_RATE * FLOOD_SECONDS
            assert hangup.code == 200, hangup
            assert loss <= MAX_LOSS, f"loss {loss:.3f}"
            assert page.received.srtp_failures == fail0
            await gauges.assert_back()


async def test_garbage_from_the_browsers_own_address_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an on-path attacker spoofing the validated address (or a broken browser) can send."""
    rate, seconds = 2000, 2.0
    rng = random.Random(7)
    pool = [
        *shapes(rng),
        # DTLS records in epoch 0 after the handshake: a fatal alert (handshake_failure), a
        # ClientHello fragment, a ChangeCipherSpec.
        bytes.fromhex("15fefd000000000000006300020228"),
        bytes.fromhex("16fefd000000000000006400100100000400000000000004fefd0000"),
        bytes.fromhex("14fefd0000000000000065000101"),
    ]
    with trio.fail_after(40):
        async with hostile_bridge(tmp_path, monkeypatch) as bridge:
            gauges = Gauges.now()
            async with open_synthetic_browser(bridge.wss) as page:
                await page.call("100", PASSWORD, ECHO)
                await page.wait_for("answer", timeout=10)
                await page.wait_media(to_receive=25, to_send=25, timeout=10)
                assert page.remote is not None
                sent0, got0 = page.sent_packets, page.received.packets
                start, garbage = trio.current_time(), 0
                while (elapsed := trio.current_time() - start) < seconds:
                    for _ in range(20):
                        await page.sock.sendto(pool[garbage % len(pool)], page.remote.candidate)
                        garbage += 1
                    await trio.sleep_until(start + garbage / rate)
                await trio.sleep(0.3)
                sent, got = page.sent_packets - sent0, page.received.packets - got0
                assert page.hangup_message is None, page.hangup_message
                await page.wait_media(to_receive=page.received.packets + 10, timeout=5)
                await page.hangup()
                hangup = await page.wait_hangup()
            loss = max(0.0, 1 - got / sent)
            print(
                f"spoofed garbage {garbage} datagrams in {elapsed:.2f} s from the page's address: "
                f"page sent {sent}, got {got} back (loss {100 * loss:.1f} %); hangup {hangup.code}"
            )
            gauges.report("garbage from the browser's address")
            assert hangup.code == 200, hangup
            assert loss <= MAX_LOSS, f"loss {loss:.3f}"
            await gauges.assert_back()
