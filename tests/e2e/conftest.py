"""A whole bridge in the test process, for the end-to-end tests (real services, loopback only)."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from tests.support.audio import write_tone_wav
from tests.support.browsers import BrowserPage, launch_chromium, launch_firefox

import trio
from bridge.app import BridgeContext, Services, run_bridge
from bridge.config import load_config
from bridge.extensions import ExtensionTable, make_extension, save_extensions
from bridge.services import bridge_services

RTP_LOW, RTP_HIGH = 31000, 31099

# The dominant frequency of the page's remote track, measured with a WebAudio analyser.
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

# The page's inbound audio as the browser reports it (RTP packets, and the level it decoded: 0..1).
INBOUND_AUDIO_JS = """
(async () => {
  let out = null;
  (await pc.getStats()).forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out = { packets: s.packetsReceived, level: s.audioLevel, energy: s.totalAudioEnergy };
    }
  });
  return out;
})()
"""


def launch_browser(
    browser: str, bridge: BridgeContext, tmp_path: Path
) -> AbstractAsyncContextManager[BrowserPage]:
    """Chromium with a 440 Hz WAV as its microphone, or Firefox (fake ~1 kHz microphone) trusting
    the bridge's self-signed certificate (needed for `wss://` from a `file://` page)."""
    if browser == "chromium":
        return launch_chromium(wav=write_tone_wav(tmp_path / "mic-440.wav", freq=440, seconds=60, rate=48000))
    return launch_firefox(ca_pem=bridge.config.cert_dir / "server.crt")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_media_ports_free() -> None:
    """Every port of the media range can be bound again: the calls gave all their sockets back."""
    for port in range(RTP_LOW, RTP_HIGH + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", port))


@asynccontextmanager
async def running_bridge(
    tmp_path: Path, extensions: Mapping[str, str], *, services: Services = bridge_services, **settings: str
) -> AsyncIterator[BridgeContext]:
    """Run `bridge.app.run_bridge` with the real call services (or `services`) on 127.0.0.1 until the
    block ends, then stop it gracefully. `settings` are config flags over the test defaults."""
    data = tmp_path / "bridge-data"
    data.mkdir(exist_ok=True)
    flags = {
        "data_dir": str(data),
        "listen": "127.0.0.1",
        "wss_port": "0",
        "sip_port": "0",
        "rtp_ports": f"{RTP_LOW}-{RTP_HIGH}",
        **settings,
    }
    config = load_config(flags=flags, env={}, home=tmp_path)
    table = ExtensionTable(())
    for number, password in extensions.items():
        table = table.with_extension(make_extension(number, password, realm=config.realm, n=2**10))
    save_extensions(config.extensions_file, table)
    async with trio.open_nursery() as nursery:
        context: BridgeContext = await nursery.start(
            lambda task_status: run_bridge(
                config, services=services, handle_signals=False, task_status=task_status
            )
        )
        try:
            yield context
        finally:
            context.stop()


async def wait_no_calls(bridge: BridgeContext, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while bridge.active_calls:
            await trio.sleep(0.05)
