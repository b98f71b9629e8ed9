"""The thin end-to-end call: headless Chromium opens the bridge's page and calls the echo extension.

The whole product runs in this process (`bridge.app.run_bridge` with the real services: SIP UA,
embedded registrar, echo extension, media plane); Chromium's microphone is a 440 Hz WAV and the test
checks, in the page, that audio comes back (inbound RTP packets and the tone's frequency in a WebAudio
analyser of the remote track), then hangs up from the page and checks nothing is left behind.
Run inside scripts/netns_run.sh (the CI does).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.e2e.conftest import (
    REMOTE_FREQUENCY_JS,
    assert_media_ports_free,
    open_fds,
    running_bridge,
    wait_no_calls,
)
from tests.support.audio import write_tone_wav
from tests.support.browsers import launch_chromium

import trio

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PASSWORD = "e2e-secret-100"


async def test_chromium_calls_the_echo_extension(tmp_path: Path) -> None:
    wav = write_tone_wav(tmp_path / "mic-440.wav", freq=440, seconds=30, rate=48000)
    async with running_bridge(tmp_path, {"100": PASSWORD}) as bridge:
        host, port = bridge.wss_addresses[0]
        # Without `cld` the page shows its form; the call starts with the Call button, so that the
        # descriptors open before it (browser driver, page load) are the baseline.
        url = f"https://{host}:{port}/lite.html?server={host}:{port}&clr=100&pwd={PASSWORD}"
        with trio.fail_after(90):
            async with launch_chromium(wav=wav) as page:
                await page.goto(url)
                await trio.sleep(0.5)
                fds_before = open_fds()
                await page.evaluate("(document.getElementById('cld').value = '600', 1)")
                await page.evaluate("(document.getElementById('form').requestSubmit(), 1)")
                await page.wait_for("['talking', 'ended'].includes(window.__mccp.state)", timeout=20)
                assert await page.evaluate("window.__mccp.state") == "talking", await page.evaluate(
                    "[window.__mccp.states, window.__mccp.endText]"
                )
                await page.wait_for("(await window.__mccp.getStats()).inbound?.packets > 50", timeout=10)
                heard = await page.evaluate(REMOTE_FREQUENCY_JS)
                assert abs(heard["freq"] - 440) < 20, heard
                await page.snap("echo-talking")
                assert bridge.active_calls == 1
                await page.evaluate("(document.getElementById('hangup').click(), 1)")
                await page.wait_for("window.__mccp.state === 'ended'", timeout=5)
                await wait_no_calls(bridge)
                await trio.sleep(0.2)
                assert open_fds() <= fds_before, "the call left descriptors open"
    assert_media_ports_free()
