"""Test audio: tones written as WAV files, and measurements of what was heard (frequency, level).

Used by the end-to-end tests to prove that audio crossed the bridge both ways: each side plays a tone of a
known frequency and the other side's recording must contain it. Stdlib + numpy only.
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def write_tone_wav(
    path: Path, *, freq: float, seconds: float, rate: int = 8000, amplitude: float = 0.35
) -> Path:
    """A mono 16-bit sine WAV (what Chromium's fake mic and baresip's aufile play)."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    samples = (amplitude * 32767 * np.sin(2 * math.pi * freq * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


@dataclass(frozen=True)
class Heard:
    """What a recording contains: its dominant frequency, its level, and how long it is."""

    freq: float
    dbfs: float
    seconds: float

    def has_tone(self, freq: float, *, tolerance: float = 0.05, min_dbfs: float = -40.0) -> bool:
        return abs(self.freq - freq) <= tolerance * freq and self.dbfs >= min_dbfs


def analyse(samples: np.ndarray, rate: int) -> Heard:
    """Dominant frequency (FFT peak, Hann window) and RMS level of linear PCM samples."""
    x = samples.astype(np.float64)
    if x.size == 0:
        return Heard(0.0, -math.inf, 0.0)
    rms = float(np.sqrt(np.mean(x**2)))
    dbfs = 20 * math.log10(rms / 32768) if rms > 0 else -math.inf
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    spectrum[0] = 0.0
    peak = int(np.argmax(spectrum))
    return Heard(freq=peak * rate / x.size, dbfs=dbfs, seconds=x.size / rate)


def analyse_wav(path: Path, *, skip_seconds: float = 0.0) -> Heard:
    """Analyse a 16-bit WAV file (first channel), skipping its first seconds (call set-up silence)."""
    with wave.open(str(path), "rb") as w:
        rate, channels = w.getframerate(), w.getnchannels()
        assert w.getsampwidth() == 2, f"{path}: expected 16-bit samples"
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    mono = data[::channels][int(skip_seconds * rate) :]
    return analyse(mono, rate)


def ulaw_decode(payload: bytes) -> np.ndarray:
    """G.711 mu-law bytes to linear 16-bit samples (for checking RTP payloads in tests)."""
    u = ~np.frombuffer(payload, dtype=np.uint8)
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa.astype(np.int32) << 3) + 0x84) << exponent) - 0x84
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)
