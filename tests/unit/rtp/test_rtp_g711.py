"""G.711 against the ITU-T G.711 tables: the decoder output levels of tables 1 (A-law) and 2
(μ-law) written as their closed forms, the wire inversions, and the translation tables."""

from __future__ import annotations

import math
import struct
import subprocess

from rtp import g711


def _ulaw_level(code: int) -> int:
    """G.711 table 2: decoder output (14-bit units) (2*step + 33) * 2**segment - 33, times 4."""
    c = ~code & 0xFF  # all bits are inverted on the wire
    magnitude = ((2 * (c & 0x0F) + 33) << ((c >> 4) & 7)) - 33
    return -4 * magnitude if c & 0x80 else 4 * magnitude


def _alaw_level(code: int) -> int:
    """G.711 table 1: segment 0 gives 2*step + 1, segment s>0 (2*step + 33) * 2**(s-1) (13-bit), times 8."""
    c = code ^ 0x55  # even bits are inverted on the wire
    seg, step = (c >> 4) & 7, c & 0x0F
    magnitude = 2 * step + 1 if seg == 0 else (2 * step + 33) << (seg - 1)
    return 8 * magnitude if c & 0x80 else -8 * magnitude


def test_decoders_match_the_g711_tables() -> None:
    assert [g711.ulaw_to_linear(c) for c in range(256)] == [_ulaw_level(c) for c in range(256)]
    assert [g711.alaw_to_linear(c) for c in range(256)] == [_alaw_level(c) for c in range(256)]


def test_reference_points() -> None:
    # μ-law: 0xFF is +0, 0x7F is -0, 0x80/0x00 are the extremes ±8031 (14-bit)
    assert (g711.ulaw_to_linear(0xFF), g711.ulaw_to_linear(0x7F)) == (0, 0)
    assert (g711.ulaw_to_linear(0x80), g711.ulaw_to_linear(0x00)) == (4 * 8031, -4 * 8031)
    # A-law: 0xD5/0x55 are the smallest levels ±1 (13-bit), 0xAA/0x2A the extremes ±4032
    assert (g711.alaw_to_linear(0xD5), g711.alaw_to_linear(0x55)) == (8, -8)
    assert (g711.alaw_to_linear(0xAA), g711.alaw_to_linear(0x2A)) == (8 * 4032, -8 * 4032)
    assert (g711.linear_to_ulaw(0), g711.linear_to_alaw(0)) == (0xFF, 0xD5)
    assert (g711.linear_to_ulaw(32767), g711.linear_to_ulaw(-32768)) == (0x80, 0x00)
    assert (g711.linear_to_alaw(32767), g711.linear_to_alaw(-32768)) == (0xAA, 0x2A)


def test_encoders_invert_decoders() -> None:
    for c in range(256):
        assert g711.linear_to_alaw(g711.alaw_to_linear(c)) == c
        assert g711.linear_to_ulaw(g711.ulaw_to_linear(c)) == (0xFF if c == 0x7F else c)


def test_encoders_are_monotonic_and_pick_a_neighbouring_level() -> None:
    levels_u = sorted({g711.ulaw_to_linear(c) for c in range(256)})
    levels_a = sorted({g711.alaw_to_linear(c) for c in range(256)})
    prev_u = prev_a = -(2**16)
    for x in range(-32768, 32768, 3):
        u = g711.ulaw_to_linear(g711.linear_to_ulaw(x))
        a = g711.alaw_to_linear(g711.linear_to_alaw(x))
        assert u >= prev_u
        assert a >= prev_a
        prev_u, prev_a = u, a
        for got, levels in ((u, levels_u), (a, levels_a)):
            i = levels.index(got)
            lo = levels[max(i - 1, 0)]
            hi = levels[min(i + 1, len(levels) - 1)]
            assert lo <= x <= hi or x < levels[0] or x > levels[-1]


def _tone(n: int = 800, freq: float = 1004.0, amplitude: float = 10000.0) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * freq * i / 8000)) for i in range(n)]


def _snr(ref: list[int], got: list[int]) -> float:
    noise = sum((a - b) ** 2 for a, b in zip(ref, got, strict=True))
    return 10 * math.log10(sum(a * a for a in ref) / noise)


def test_tone_round_trip_snr() -> None:
    tone = _tone()
    assert _snr(tone, list(g711.decode_ulaw(g711.encode_ulaw(tone)))) > 35
    assert _snr(tone, list(g711.decode_alaw(g711.encode_alaw(tone)))) > 35


def test_translation_tables() -> None:
    assert len(g711.ULAW_TO_ALAW) == len(g711.ALAW_TO_ULAW) == 256
    tone = _tone()
    pcmu = g711.encode_ulaw(tone)
    pcma = g711.ulaw_to_alaw(pcmu)
    assert pcma == pcmu.translate(g711.ULAW_TO_ALAW)
    assert _snr(tone, list(g711.decode_alaw(pcma))) > 32
    assert _snr(tone, list(g711.decode_ulaw(g711.alaw_to_ulaw(g711.encode_alaw(tone))))) > 32
    # each translated code decodes to the level nearest to the source level
    levels_a = [g711.alaw_to_linear(c) for c in range(256)]
    for c in range(256):
        v = g711.ulaw_to_linear(c)
        best = min(abs(v - lv) for lv in levels_a)
        assert abs(g711.alaw_to_linear(g711.ULAW_TO_ALAW[c]) - v) <= best + 8
    # silence stays silence
    assert g711.ULAW_TO_ALAW[0xFF] == 0xD5
    assert g711.ALAW_TO_ULAW[0xD5] in (0xFF, 0xFE)


def _g191_ulaw(x: int) -> int:
    """The μ-law encoder of the ITU-T G.191 Software Tool Library, transcribed from its description."""
    absno = ((~x) >> 2) if x < 0 else (x >> 2)
    absno = min(absno + 33, 0x1FFF)
    segno, i = 1, absno >> 6
    while i:
        segno, i = segno + 1, i >> 1
    y = ((0x8 - segno) << 4) | (0xF - ((absno >> segno) & 0xF))
    return y | 0x80 if x >= 0 else y


def _g191_alaw(x: int) -> int:
    """The A-law encoder of the ITU-T G.191 Software Tool Library, transcribed from its description."""
    ix = ((~x) >> 4) if x < 0 else (x >> 4)
    if ix > 15:
        exponent = 1
        while ix > 16 + 15:
            ix, exponent = ix >> 1, exponent + 1
        ix = ix - 16 + (exponent << 4)
    return (ix | 0x80 if x >= 0 else ix) ^ 0x55


def test_encoders_match_the_itu_reference_for_every_16_bit_input() -> None:
    samples = range(-32768, 32768)
    assert g711.encode_ulaw(samples) == bytes(_g191_ulaw(x) for x in samples)
    assert g711.encode_alaw(samples) == bytes(_g191_alaw(x) for x in samples)
    # out-of-range input is clamped, not wrapped
    assert g711.linear_to_ulaw(40000) == 0x80
    assert g711.linear_to_alaw(-40000) == 0x2A


def _sox(args: list[str], data: bytes) -> bytes:
    proc = subprocess.run(["sox", "-D", *args], input=data, capture_output=True, check=True, timeout=20)
    return proc.stdout


def test_decoders_match_sox() -> None:
    """sox (an independent G.711 implementation, installed by scripts/install-peers.sh) decodes
    every code to the same linear value. (Its encoders round some decision levels differently from
    the ITU reference, so the encoders are checked against G.191 above instead.)"""
    codes = bytes(range(256))
    linear = ["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-L", "-"]
    for law, decode in (("u-law", g711.decode_ulaw), ("a-law", g711.decode_alaw)):
        out = _sox(["-t", "raw", "-r", "8000", "-e", law, "-b", "8", "-c", "1", "-", *linear], codes)
        assert list(struct.unpack("<256h", out)) == list(decode(codes))
