"""G.711 (ITU-T G.711, 1988): μ-law and A-law companding, and PCMU <-> PCMA transcoding.

The relay transcodes with 256-byte translation tables (`bytes.translate`), one C loop per
payload: `ULAW_TO_ALAW` and `ALAW_TO_ULAW` map each code through its linear value (decode with the
G.711 decision tables, re-encode in the other law). The linear functions work on 16-bit signed
samples and exist for tests and tools (making and measuring tones); they follow the segment
(chord) layout of G.711 tables 1 and 2:

* μ-law: 14-bit magnitude with bias 33, 8 segments of 16 steps, all bits inverted on the wire.
  Decoded values lie in ±32124 (±8031 in 14-bit units); code 0xFF is +0, 0x7F is -0.
* A-law: 13-bit magnitude, segment 0 and 1 linear, even bits inverted (XOR 0x55) on the wire.
  Decoded values lie in ±32256 (±4032 in 13-bit units); codes 0xD5 / 0x55 are +8 / -8.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "ALAW_TO_ULAW",
    "ULAW_TO_ALAW",
    "alaw_to_linear",
    "alaw_to_ulaw",
    "decode_alaw",
    "decode_ulaw",
    "encode_alaw",
    "encode_ulaw",
    "linear_to_alaw",
    "linear_to_ulaw",
    "ulaw_to_alaw",
    "ulaw_to_linear",
]

_ULAW_BIAS = 0x84  # 33 in 14-bit units, shifted to 16-bit
_ULAW_CLIP = 32635
_ALAW_SEGMENT_ENDS = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _clamp16(sample: int) -> int:
    return -32768 if sample < -32768 else (32767 if sample > 32767 else sample)


def linear_to_ulaw(sample: int) -> int:
    """Encode one 16-bit linear sample as a μ-law code (G.711 table 2a)."""
    sample = _clamp16(sample)
    sign = 0x80 if sample < 0 else 0
    # Negative samples take the one's complement (-x - 1), as the ITU-T G.191 reference encoder
    # does, so that -32768 fits and the decision levels are symmetric.
    magnitude = min(~sample if sign else sample, _ULAW_CLIP) + _ULAW_BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_to_linear(code: int) -> int:
    """Decode one μ-law code to a 16-bit linear sample (G.711 table 2a decoder output)."""
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + _ULAW_BIAS) << ((code & 0x70) >> 4)
    return _ULAW_BIAS - t if code & 0x80 else t - _ULAW_BIAS


def linear_to_alaw(sample: int) -> int:
    """Encode one 16-bit linear sample as an A-law code (G.711 table 1a)."""
    value = _clamp16(sample) >> 3  # 13-bit
    if value >= 0:
        mask = 0xD5  # sign bit set for positive values, even bits inverted
    else:
        mask = 0x55
        value = -value - 1
    segment = 0
    while segment < 8 and value > _ALAW_SEGMENT_ENDS[segment]:
        segment += 1
    if segment >= 8:
        return 0x7F ^ mask
    quantized = (value >> 1) & 0x0F if segment < 2 else (value >> segment) & 0x0F
    return ((segment << 4) | quantized) ^ mask


def alaw_to_linear(code: int) -> int:
    """Decode one A-law code to a 16-bit linear sample (G.711 table 1a decoder output)."""
    code ^= 0x55
    t = (code & 0x0F) << 4
    segment = (code & 0x70) >> 4
    if segment == 0:
        t += 8
    else:
        t = (t + 0x108) << (segment - 1)
    return t if code & 0x80 else -t


ULAW_TO_ALAW = bytes(linear_to_alaw(ulaw_to_linear(c)) for c in range(256))
"""Translation table: `pcmu_payload.translate(ULAW_TO_ALAW)` is the PCMA payload."""
ALAW_TO_ULAW = bytes(linear_to_ulaw(alaw_to_linear(c)) for c in range(256))
"""Translation table: `pcma_payload.translate(ALAW_TO_ULAW)` is the PCMU payload."""

_ULAW_DECODE = tuple(ulaw_to_linear(c) for c in range(256))
_ALAW_DECODE = tuple(alaw_to_linear(c) for c in range(256))


def ulaw_to_alaw(payload: bytes | bytearray | memoryview) -> bytes:
    """Transcode a PCMU payload to PCMA."""
    return bytes(payload).translate(ULAW_TO_ALAW)


def alaw_to_ulaw(payload: bytes | bytearray | memoryview) -> bytes:
    """Transcode a PCMA payload to PCMU."""
    return bytes(payload).translate(ALAW_TO_ULAW)


def encode_ulaw(samples: Iterable[int]) -> bytes:
    """Encode 16-bit linear samples as a PCMU payload."""
    return bytes(linear_to_ulaw(s) for s in samples)


def encode_alaw(samples: Iterable[int]) -> bytes:
    """Encode 16-bit linear samples as a PCMA payload."""
    return bytes(linear_to_alaw(s) for s in samples)


def decode_ulaw(payload: bytes | bytearray | memoryview) -> Sequence[int]:
    """Decode a PCMU payload to 16-bit linear samples."""
    return [_ULAW_DECODE[b] for b in payload]


def decode_alaw(payload: bytes | bytearray | memoryview) -> Sequence[int]:
    """Decode a PCMA payload to 16-bit linear samples."""
    return [_ALAW_DECODE[b] for b in payload]
