"""Fixtures for the SIP tests against real peers: our transport + UA on a free loopback port."""

from __future__ import annotations

import math
import re
import struct
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import trio
from sip.transport import SipTransport
from sip.ua import SipUA


@pytest.fixture
async def ua(nursery: trio.Nursery) -> SipUA:
    """A running UA on 127.0.0.1 (never 5060: Kamailio aliases it), UDP + TCP."""
    transport = SipTransport("127.0.0.1", 0)
    await nursery.start(transport.run)
    agent = SipUA(transport)
    await nursery.start(agent.run)
    return agent


def audio_sdp(port: int, host: str = "127.0.0.1", pts: tuple[int, ...] = (0, 8, 101)) -> bytes:
    """A plain RTP/AVP offer with PCMU/PCMA/telephone-event on `port`."""
    names = {0: "PCMU/8000", 8: "PCMA/8000", 101: "telephone-event/8000"}
    lines = [
        "v=0",
        f"o=- 1 1 IN IP4 {host}",
        "s=-",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, pts))}",
        *(f"a=rtpmap:{pt} {names[pt]}" for pt in pts),
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def sdp_media_address(sdp: bytes) -> tuple[str, int, list[int]]:
    """(connection address, audio port, payload types) of an SDP answer."""
    text = sdp.decode()
    c = re.search(r"^c=IN IP[46] (\S+)", text, re.M)
    m = re.search(r"^m=audio (\d+) RTP/AVP ([\d ]+)", text, re.M)
    assert c is not None, text
    assert m is not None, text
    return c.group(1), int(m.group(1)), [int(x) for x in m.group(2).split()]


def rtp_packet(seq: int, *, pt: int = 0, ssrc: int = 0x1234, payload: bytes = b"\xff" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + payload


async def udp_socket() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


def tone_samples(freq: float, count: int, *, start: int = 0, amplitude: float = 8000.0) -> list[int]:
    """`count` samples of a sine at 8 kHz, starting at sample index `start`."""
    t = (np.arange(start, start + count) / 8000.0) * 2 * math.pi * freq
    return [int(x) for x in (amplitude * np.sin(t))]


def write_tone_wav(path: Path, freq: float, seconds: float) -> Path:
    """A mono S16 8 kHz WAV (baresip's aufile microphone needs exactly this format)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.array(tone_samples(freq, int(seconds * 8000)), dtype="<i2").tobytes())
    return path


def dominant_frequency(samples: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """(FFT peak frequency in Hz, RMS level in dBFS) of 8 kHz samples."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return 0.0, -math.inf
    rms = float(np.sqrt(np.mean(x**2)))
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    return float(np.argmax(spectrum)) * 8000 / x.size, (
        20 * math.log10(rms / 32768) if rms > 0 else -math.inf
    )


def wav_samples(path: Path, skip_seconds: float = 0.0) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return data[:: w.getnchannels()][int(skip_seconds * w.getframerate()) :]
