"""The embedded default end to end: a real browser opens the page and calls the echo extension.

The whole product runs in this process (`bridge.app.run_bridge` with the real services: SIP UA,
embedded registrar, echo extension, media plane), with the self-signed certificate it makes on first
start. Headless Chromium (microphone: a 440 Hz WAV) and headless Firefox ESR (its fake microphone: a
1 kHz tone) load the page from the bridge over HTTPS and from a saved copy on `file://`, call 600, and
the test checks in the page that their own audio comes back (inbound RTP packets, the decoded audio
level, and in Chromium the dominant frequency of the remote track in a WebAudio analyser: headless
Firefox has no audio output device, so its AudioContext never runs); then the page hangs up and
nothing of the call is left behind (no call, descriptors back to the count before the call, every
media port free).
Run inside scripts/netns_run.sh (the CI does).
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.e2e.conftest import (
    INBOUND_AUDIO_JS,
    REMOTE_FREQUENCY_JS,
    assert_media_ports_free,
    launch_browser,
    open_fds,
    running_bridge,
    wait_no_calls,
)

import trio
from bridge.app import BridgeContext, load_page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PASSWORD = "e2e-secret-100"
TONES = {"chromium": 440.0}


def page_url(origin: str, bridge: BridgeContext, tmp_path: Path) -> str:
    host, port = bridge.wss_addresses[0]
    # Without `cld` the page shows its form: the call starts with the Call button, so that the
    # descriptors open before it (browser driver, page load) are the baseline of the leak check.
    query = f"server={host}:{port}&clr=100&pwd={PASSWORD}"
    if origin == "https":
        return f"https://{host}:{port}/lite.html?{query}"
    saved = tmp_path / "saved" / "lite.html"
    saved.parent.mkdir()
    saved.write_bytes(load_page())
    return f"{saved.as_uri()}?{query}"


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[BridgeContext]:
    async with running_bridge(tmp_path, {"100": PASSWORD}) as context:
        yield context


@pytest.mark.parametrize("origin", ["https", "file"])
@pytest.mark.parametrize("browser", ["chromium", "firefox"])
async def test_browser_calls_the_echo_extension(
    browser: str, origin: str, bridge: BridgeContext, tmp_path: Path
) -> None:
    with trio.fail_after(100):
        async with launch_browser(browser, bridge, tmp_path) as page:
            await page.goto(page_url(origin, bridge, tmp_path))
            await page.wait_for("document.getElementById('cld') !== null", timeout=10)
            await trio.sleep(0.5)
            fds_before = open_fds()
            await page.evaluate("(document.getElementById('cld').value = '600', 1)")
            await page.evaluate("(document.getElementById('form').requestSubmit(), 1)")
            await page.wait_for("['talking', 'ended'].includes(window.__mccp.state)", timeout=25)
            assert await page.evaluate("window.__mccp.state") == "talking", await page.evaluate(
                "[window.__mccp.states, window.__mccp.endText]"
            )
            await page.wait_for("(await window.__mccp.getStats()).inbound?.packets > 50", timeout=10)
            inbound = await page.evaluate(INBOUND_AUDIO_JS)
            assert inbound["level"] > 0.01, inbound  # decoded audio, not silence
            if browser == "chromium":  # headless Firefox has no audio output, so WebAudio cannot run there
                heard = await page.evaluate(REMOTE_FREQUENCY_JS)
                assert abs(heard["freq"] - TONES[browser]) < 0.05 * TONES[browser], heard
            await page.snap(f"echo-{origin}-talking")
            assert bridge.active_calls == 1
            await page.evaluate("(document.getElementById('hangup').click(), 1)")
            await page.wait_for("window.__mccp.state === 'ended'", timeout=5)
            await wait_no_calls(bridge)
            await trio.sleep(0.3)
            assert open_fds() <= fds_before, "the call left descriptors open"
    assert_media_ports_free()
    shutil.rmtree(tmp_path / "saved", ignore_errors=True)
