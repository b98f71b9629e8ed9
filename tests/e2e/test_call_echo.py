"""The thin end-to-end call: headless Chromium opens the bridge's page and calls the echo extension.

The whole product runs in this process (`bridge.app.run_bridge` with the real services: SIP UA,
embedded registrar, echo extension, media plane); Chromium's microphone is a 440 Hz WAV and the test
checks, in the page, that audio comes back (inbound RTP packets and the tone's frequency in a WebAudio
analyser of the remote track), then hangs up from the page and checks nothing is left behind.
Run inside scripts/netns_run.sh (the CI does).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.support.audio import write_tone_wav
from tests.support.browsers import launch_chromium

import trio
from bridge.app import BridgeContext, run_bridge
from bridge.config import load_config
from bridge.extensions import ExtensionTable, make_extension, save_extensions
from bridge.services import bridge_services

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PASSWORD = "e2e-secret-100"
RTP_LOW, RTP_HIGH = 31000, 31099

# The dominant frequency of the remote track, measured in the page with a WebAudio analyser.
REMOTE_FREQUENCY_JS = """
(async () => {
  const track = pc.getReceivers()[0].track;
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(new MediaStream([track]));
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 8192;
  source.connect(analyser);
  await new Promise((r) => setTimeout(r, 1500));
  const bins = new Float32Array(analyser.frequencyBinCount);
  analyser.getFloatFrequencyData(bins);
  let best = 1;
  for (let i = 2; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
  const result = { freq: best * ctx.sampleRate / analyser.fftSize, level: bins[best] };
  ctx.close();
  return result;
})()
"""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[BridgeContext]:
    data = tmp_path / "data"
    data.mkdir()
    flags = {
        "data_dir": str(data),
        "listen": "127.0.0.1",
        "wss_port": "0",
        "sip_port": "0",
        "rtp_ports": f"{RTP_LOW}-{RTP_HIGH}",
    }
    config = load_config(flags=flags, env={}, home=tmp_path)
    table = ExtensionTable(()).with_extension(make_extension("100", PASSWORD, realm=config.realm, n=2**10))
    save_extensions(config.extensions_file, table)
    async with trio.open_nursery() as nursery:
        context: BridgeContext = await nursery.start(
            lambda task_status: run_bridge(
                config, services=bridge_services, handle_signals=False, task_status=task_status
            )
        )
        yield context
        context.stop()


async def test_chromium_calls_the_echo_extension(bridge: BridgeContext, tmp_path: Path) -> None:
    host, port = bridge.wss_addresses[0]
    wav = write_tone_wav(tmp_path / "mic-440.wav", freq=440, seconds=30, rate=48000)
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
            await page.wait_for(
                "window.__mccp.state === 'talking' || window.__mccp.state === 'ended'", timeout=20
            )
            assert await page.evaluate("window.__mccp.state") == "talking", await page.evaluate(
                "[window.__mccp.states, window.__mccp.endText]"
            )
            await page.wait_for("(await window.__mccp.getStats()).inbound?.packets > 50", timeout=10)
            heard = await page.evaluate(REMOTE_FREQUENCY_JS)
            assert abs(heard["freq"] - 440) < 20, heard
            await page.snap("echo-talking")
            assert bridge.active_calls == 1
            await page.evaluate("document.getElementById('hangup').click()")
            await page.wait_for("window.__mccp.state === 'ended'", timeout=5)
            with trio.fail_after(10):
                while bridge.active_calls:
                    await trio.sleep(0.05)
            await trio.sleep(0.2)
            assert open_fds() <= fds_before, "the call left descriptors open"
    assert_media_ports_free()


def assert_media_ports_free() -> None:
    """Every port of the media range can be bound again: the call gave all of its sockets back."""
    for port in range(RTP_LOW, RTP_HIGH + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))
