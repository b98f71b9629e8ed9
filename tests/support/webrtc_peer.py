"""aiortc as an independent WebRTC peer for the media tests (run as a subprocess: aiortc is asyncio).

    python -m tests.support.webrtc_peer [--tone HZ] [--seconds S] [--codec PCMU|PCMA]

Protocol on stdin/stdout, one JSON object per line:
  peer -> test  {"type": "offer", "sdp": ...}       audio sendrecv, only the chosen G.711 codec,
                                                     a 127.0.0.1 host candidate, setup:actpass
  test -> peer  {"type": "answer", "sdp": ...}
  peer -> test  {"type": "connected", ...}           once ICE and DTLS are up
  peer -> test  {"type": "report", ...}              after S seconds of media: frames decoded,
                                                     dominant frequency and level of what it heard,
                                                     ICE/DTLS states, then it exits
The peer sends a sine tone (default 440 Hz) paced in real time.

Loopback only (tests run in a network namespace with only `lo`): aioice is told that the host
has only 127.0.0.1, and no STUN server is configured (aiortc's default would be Google's).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import sys
import time
from typing import Any

import aioice.ice
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

RATE = 8000
FRAME = 160  # 20 ms at 8 kHz


def _loopback_hosts(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


aioice.ice.get_host_addresses = _loopback_hosts


class SineTrack(MediaStreamTrack):
    """A mono 16-bit sine at `freq` Hz, 20 ms frames, paced against the monotonic clock."""

    kind = "audio"

    def __init__(self, freq: float) -> None:
        super().__init__()
        self._step = 2 * np.pi * freq / RATE
        self._pts = 0
        self._t0: float | None = None

    async def recv(self) -> AudioFrame:
        if self._t0 is None:
            self._t0 = time.monotonic()
        wait = self._t0 + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        n = np.arange(self._pts, self._pts + FRAME)
        pcm = (9000 * np.sin(self._step * n)).astype("<i2")
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_line() -> dict[str, Any]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("stdin closed")
    result: dict[str, Any] = json.loads(line)
    return result


def dominant(samples: np.ndarray) -> tuple[float, float]:
    """(frequency of the FFT peak in Hz, RMS level in dBFS) of 8 kHz samples."""
    if samples.size == 0:
        return 0.0, -200.0
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    freq = float(np.argmax(spectrum)) * RATE / x.size
    rms = float(np.sqrt(np.mean(x**2)))
    return freq, (20 * float(np.log10(rms / 32768)) if rms > 0 else -200.0)


async def main(args: argparse.Namespace) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    chunks: list[np.ndarray] = []
    consumers: set[asyncio.Task[None]] = set()
    frames = 0
    connected = asyncio.Event()

    async def consume(track: MediaStreamTrack) -> None:
        nonlocal frames
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            frames += 1
            pcm = frame.to_ndarray().reshape(-1)
            if frame.sample_rate != RATE:  # aiortc decodes G.711 at 8 kHz; keep it honest
                pcm = pcm[:: max(1, frame.sample_rate // RATE)]
            chunks.append(pcm)

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        consumers.add(asyncio.ensure_future(consume(track)))

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState == "connected":
            connected.set()

    transceiver = pc.addTransceiver(SineTrack(args.tone), direction="sendrecv")
    transceiver.setCodecPreferences(
        [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == f"audio/{args.codec}"]
    )
    await pc.setLocalDescription(await pc.createOffer())
    emit({"type": "offer", "sdp": pc.localDescription.sdp})
    answer = await read_line()
    t_answer = time.monotonic()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    try:
        await asyncio.wait_for(connected.wait(), args.connect_timeout)
    except TimeoutError:
        emit({"type": "report", "ok": False, "error": "not connected", "state": pc.connectionState})
        await pc.close()
        return
    emit({"type": "connected", "after_answer_s": round(time.monotonic() - t_answer, 3)})
    await asyncio.sleep(args.seconds)
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype="<i2")
    # skip the first 200 ms (jitter buffer start, possible silence before the far side plays)
    freq, dbfs = dominant(samples[RATE // 5 :])
    sender_stats = await transceiver.sender.getStats()
    sent = sum(getattr(s, "packetsSent", 0) for s in sender_stats.values() if s.type == "outbound-rtp")
    emit(
        {
            "type": "report",
            "ok": True,
            "frames": frames,
            "freq": freq,
            "dbfs": dbfs,
            "packets_sent": sent,
            "state": pc.connectionState,
        }
    )
    await pc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tone", type=float, default=440.0)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--codec", default="PCMU", choices=["PCMU", "PCMA"])
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    asyncio.run(main(parser.parse_args()))
