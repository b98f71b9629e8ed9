"""End to end in front of a PBX: a browser -> bridge (upstream mode) -> Kamailio (digest) -> baresip.

The bridge sends every call to Kamailio as its upstream proxy and answers Kamailio's 407 digest
challenge with the page's own `clr`/`pwd`, so Kamailio decides who may call. baresip is extension 101,
registered to Kamailio; it plays 700 Hz and records. Checked: with the right password the page talks
and decodes audio (in Chromium: baresip's 700 Hz), baresip hears the page's tone (Chromium 440 Hz,
Firefox ~1 kHz), and the page hanging up ends the call on both sides
(BYE through Kamailio's Record-Route); with a wrong password Kamailio refuses the call and the page
shows 403. Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.conftest import (
    INBOUND_AUDIO_JS,
    REMOTE_FREQUENCY_JS,
    assert_media_ports_free,
    launch_browser,
    running_bridge,
    wait_no_calls,
)
from tests.support.audio import analyse_wav, write_tone_wav
from tests.support.sip_peers import KAMAILIO_PORT, Baresip, Kamailio

import trio

pytestmark = [pytest.mark.browser, pytest.mark.peers, pytest.mark.timeout(150)]


PHONE_TONE = 700.0
PAGE_TONES = {"chromium": 440.0, "firefox": 1000.0}


@pytest.mark.parametrize("browser", ["chromium", "firefox"])
async def test_browser_calls_through_kamailio_with_digest(browser: str, tmp_path: Path) -> None:
    phone_wav = write_tone_wav(tmp_path / "phone.wav", freq=PHONE_TONE, seconds=60, rate=8000)
    kamailio = Kamailio(tmp_path / "kamailio")
    await trio.to_thread.run_sync(kamailio.start)
    try:
        phone = Baresip(tmp_path / "baresip", phone_wav, ext="101", password="pass101")
        await trio.to_thread.run_sync(phone.start)
        try:
            upstream = f"sip:127.0.0.1:{KAMAILIO_PORT}"
            async with running_bridge(tmp_path, {}, upstream=upstream) as bridge:
                host, port = bridge.wss_addresses[0]
                base = f"https://{host}:{port}/lite.html?server={host}:{port}&cld=101"
                with trio.fail_after(100):
                    async with launch_browser(browser, bridge, tmp_path) as page:
                        await page.goto(f"{base}&clr=100&pwd=wrong-password")
                        await page.wait_for("window.__mccp.state === 'ended'", timeout=20)
                        assert await page.evaluate("window.__mccp.hangupCode") == 403
                        await page.snap("kamailio-wrong-password")

                        await page.goto(f"{base}&clr=100&pwd=pass100")
                        await page.wait_for("['talking', 'ended'].includes(window.__mccp.state)", timeout=20)
                        assert await page.evaluate("window.__mccp.state") == "talking", await page.evaluate(
                            "[window.__mccp.states, window.__mccp.endText]"
                        )
                        await page.wait_for(
                            "(await window.__mccp.getStats()).inbound?.packets > 50", timeout=10
                        )
                        assert (await page.evaluate(INBOUND_AUDIO_JS))["level"] > 0.01
                        if browser == "chromium":  # headless Firefox cannot run WebAudio
                            heard = await page.evaluate(REMOTE_FREQUENCY_JS)
                            assert abs(heard["freq"] - PHONE_TONE) < 25, heard
                        await page.snap("kamailio-talking")
                        await trio.sleep(1.0)
                        await page.evaluate("(document.getElementById('hangup').click(), 1)")
                        await page.wait_for("window.__mccp.state === 'ended'", timeout=5)
                        await wait_no_calls(bridge)
                # the phone saw the BYE: baresip logs the end of the call
                with trio.fail_after(5):
                    while "terminated" not in phone.log():
                        await trio.sleep(0.1)
        finally:
            await trio.to_thread.run_sync(phone.stop)
    finally:
        await trio.to_thread.run_sync(kamailio.stop)
    recording = phone.received_wav()
    assert recording is not None, phone.log()[-2000:]
    heard_by_phone = analyse_wav(recording, skip_seconds=0.5)
    assert heard_by_phone.has_tone(PAGE_TONES[browser]), heard_by_phone
    assert_media_ports_free()
