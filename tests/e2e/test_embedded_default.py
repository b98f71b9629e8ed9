"""The embedded default as a newcomer meets it: `mccp-bridge serve` with no config at all (a fresh
$HOME, default ports, default workers), the ready-to-click URL it prints on first start, and headless
Chromium opening that URL: the call to the echo extension returns the browser's own 440 Hz tone.
Run inside scripts/netns_run.sh (default ports 5062/5060 and 20000-29999 on an isolated loopback)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.e2e.conftest import INBOUND_AUDIO_JS, REMOTE_FREQUENCY_JS
from tests.support.audio import write_tone_wav
from tests.support.browsers import in_loopback_only_netns, launch_chromium

import trio

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


async def test_serve_with_no_config_and_the_printed_url_calls_the_echo(tmp_path: Path) -> None:
    assert in_loopback_only_netns(), "uses the default ports: run inside scripts/netns_run.sh"
    env = {**os.environ, "HOME": str(tmp_path)}
    env = {k: v for k, v in env.items() if not k.startswith("MCCP_BRIDGE_")}
    log = tmp_path / "serve.log"
    with log.open("w") as out:  # a file, not a pipe: nobody has to keep reading it
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve"], env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        with trio.fail_after(30):
            while not (found := re.search(r"https://\S+/lite\.html\?\S+cld=600", log.read_text())):
                assert proc.poll() is None, "serve exited:\n" + log.read_text()
                await trio.sleep(0.05)
        url = found.group(0)
        assert "start WSS service" in log.read_text()
        wav = write_tone_wav(tmp_path / "mic-440.wav", freq=440, seconds=30, rate=48000)
        with trio.fail_after(60):
            async with launch_chromium(wav=wav) as page:
                await page.goto(url)
                await page.wait_for("['talking', 'ended'].includes(window.__mccp.state)", timeout=25)
                assert await page.evaluate("window.__mccp.state") == "talking", await page.evaluate(
                    "[window.__mccp.states, window.__mccp.endText]"
                )
                await page.wait_for("(await window.__mccp.getStats()).inbound?.packets > 50", timeout=10)
                assert (await page.evaluate(INBOUND_AUDIO_JS))["level"] > 0.01
                heard = await page.evaluate(REMOTE_FREQUENCY_JS)
                assert abs(heard["freq"] - 440) < 20, heard
                await page.snap("embedded-default-talking")
                await page.evaluate("(document.getElementById('hangup').click(), 1)")
                await page.wait_for("window.__mccp.state === 'ended'", timeout=5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        status = await trio.to_thread.run_sync(proc.wait, 15)
    assert status == 0
    assert (tmp_path / ".mccp-bridge" / "wrtcCert" / "server.crt").exists()
