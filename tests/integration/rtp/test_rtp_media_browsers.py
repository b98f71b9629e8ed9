"""rtp.media against real browsers' WebRTC stacks: headless Chromium (BoringSSL DTLS, libwebrtc
ICE) and Firefox ESR (NSS DTLS, its own ICE) take our ICE-lite answer; media flows both ways.

The page makes its "microphone" with Web Audio (a 440 Hz oscillator) on about:blank, so neither
getUserMedia nor a page server is needed; the SIP side is a plain RTP socket playing 1 kHz.
Run in the loopback-only namespace (scripts/netns_run.sh).
"""

from __future__ import annotations

import json
import math
import secrets
import struct
from typing import Any

import numpy as np
import pytest
from tests.support.audio import analyse
from tests.support.browsers import launch_chromium, launch_firefox

import trio
from rtp import g711
from rtp.dtls import DtlsCertificate
from rtp.media import open_media
from rtp.plane import open_media_plane
from rtp.ports import PortAllocator

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

CERT = DtlsCertificate.generate("bridge-browser-test")

MAKE_OFFER = """(async () => {
  const pc = new RTCPeerConnection({iceServers: [], bundlePolicy: 'max-bundle'});
  window.__pc = pc;
  const ac = new AudioContext({sampleRate: 48000});
  // Headless Firefox keeps an AudioContext suspended without a user gesture: don't wait for it.
  await Promise.race([ac.resume(), new Promise((r) => setTimeout(r, 300))]);
  const osc = ac.createOscillator();
  osc.frequency.value = 440;
  const gain = ac.createGain();
  gain.gain.value = 0.3;
  const dest = ac.createMediaStreamDestination();
  osc.connect(gain).connect(dest);
  osc.start();
  pc.addTrack(dest.stream.getAudioTracks()[0], dest.stream);
  pc.ontrack = (e) => { window.__remote = e.streams[0] || new MediaStream([e.track]); };
  await pc.setLocalDescription(await pc.createOffer());
  if (pc.iceGatheringState !== 'complete') {
    await new Promise((resolve) => {
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    });
  }
  return pc.localDescription.sdp;
})()"""

LISTEN = """(async () => {
  const el = new Audio();
  el.srcObject = window.__remote;
  el.muted = true;
  await el.play().catch(() => {});
  const ac = new AudioContext();
  await Promise.race([ac.resume(), new Promise((r) => setTimeout(r, 300))]);
  const an = ac.createAnalyser();
  an.fftSize = 8192;
  ac.createMediaStreamSource(window.__remote).connect(an);
  await new Promise((r) => setTimeout(r, 1500));
  const d = new Float32Array(an.frequencyBinCount);
  an.getFloatFrequencyData(d);
  let best = 1;
  for (let i = 2; i < d.length; i++) if (d[i] > d[best]) best = i;
  let inbound = null;
  (await window.__pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'audio')
      inbound = {packets: s.packetsReceived, lost: s.packetsLost, codec: s.codecId};
  });
  return {freq: best * ac.sampleRate / an.fftSize, level_db: d[best], inbound, audio: ac.state};
})()"""


async def udp() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


def phone_answer(port: int) -> str:
    return (
        "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        f"a=rtcp:{port + 1}\r\na=sendrecv\r\n"
    )


async def play_tone(sock: trio.socket.SocketType, dest: tuple[str, int], freq: float, seconds: float) -> None:
    seq0, ts0 = secrets.randbelow(1 << 16), secrets.randbelow(1 << 32)
    start = trio.current_time()
    for i in range(int(seconds * 50)):
        pcm = [int(9000 * math.sin(2 * math.pi * freq * (160 * i + k) / 8000)) for k in range(160)]
        header = struct.pack("!BBHII", 0x80, 0, (seq0 + i) & 0xFFFF, (ts0 + 160 * i) & 0xFFFFFFFF, 0x7777)
        await sock.sendto(header + g711.encode_ulaw(pcm), dest)
        await trio.sleep_until(start + (i + 1) * 0.02)


@pytest.mark.parametrize("browser", ["chromium", "firefox"])
async def test_browser_call_audio_both_ways(browser: str) -> None:
    launch = launch_chromium if browser == "chromium" else launch_firefox
    ports = PortAllocator(43000, 43099, "127.0.0.1")
    heard: list[bytes] = []
    result: dict[str, Any] = {}
    with trio.fail_after(45):
        phone = await udp()
        with phone:
            async with open_media_plane() as plane, launch() as page:
                await page.goto("about:blank")
                offer = await page.evaluate(MAKE_OFFER)
                t0 = trio.current_time()
                async with (
                    open_media(
                        ports,
                        offer,
                        advertise_hosts=["127.0.0.1"],
                        sip_host="127.0.0.1",
                        certificate=CERT,
                        plane=plane,
                    ) as media,
                    trio.open_nursery() as call,
                ):
                    sdp = json.dumps(media.browser_answer)
                    await page.evaluate(
                        f"__pc.setRemoteDescription({{type: 'answer', sdp: {sdp}}}).then(() => 1)"
                    )
                    await call.start(media.run_ice_dtls)
                    dtls_s = trio.current_time() - t0
                    call.start_soon(media.run_relay)
                    media.set_sip_answer(phone_answer(phone.getsockname()[1]))

                    async def phone_listen() -> None:
                        while True:
                            data, _ = await phone.recvfrom(2048)
                            if data[1] & 0x7F == 0:
                                heard.append(data[12:])

                    call.start_soon(phone_listen)
                    sip_port = int(media.sip_offer.split("m=audio ")[1].split()[0])
                    call.start_soon(play_tone, phone, ("127.0.0.1", sip_port), 1000.0, 3.0)
                    await page.wait_for("window.__pc.connectionState === 'connected' && !!window.__remote")
                    result = await page.evaluate(LISTEN)
                    stats = media.stats()
                    call.cancel_scope.cancel()
    pcm = np.array([s for p in heard for s in g711.decode_ulaw(p)], dtype=np.int16)
    sip_side = analyse(pcm[1600:], 8000)
    print(f"{browser}: offer->DTLS {dtls_s * 1000:.0f} ms; page heard {result}; SIP side heard {sip_side}")
    assert result["inbound"]["packets"] > 50
    assert len(heard) > 50
    if browser == "chromium":
        assert result["freq"] == pytest.approx(1000, rel=0.03)
        assert sip_side.has_tone(440, tolerance=0.03)
    else:
        # Headless Firefox leaves Web Audio suspended (no user gesture): it sends silence and
        # cannot analyse what it plays, so only the packet flow both ways is checked.
        assert result["audio"] == "suspended"
    assert stats.to_sip.packets > 50
    assert stats.selected is not None
    assert stats.selected[0] == "127.0.0.1"
    assert not ports.in_use
