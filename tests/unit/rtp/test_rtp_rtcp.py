"""RTCP compound parsing and SSRC rewriting (RFC 3550 §6, RFC 4585 §6.1)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.errors import RtpParseError
from rtp.rtcp import RtcpType, parse_compound_untrusted, rewrite_ssrcs, walk_untrusted

SIP_SSRC = 0x11111111
BROWSER_SSRC = 0x22222222
OUR_SSRC = 0x33333333


def _sr(ssrc: int, rtp_ts: int, blocks: list[int]) -> bytes:
    body = struct.pack("!IQIII", ssrc, 0xE4A1B2C3D4E5F607, rtp_ts, 50, 8000)
    for src in blocks:
        body += struct.pack("!IIIIII", src, (3 << 24) | 0xFFFFFE, 1000, 12, 0xAABBCCDD, 65536)
    return struct.pack("!BBH", 0x80 | len(blocks), 200, len(body) // 4) + body


def _rr(ssrc: int, blocks: list[int]) -> bytes:
    body = struct.pack("!I", ssrc)
    for src in blocks:
        body += struct.pack("!IIIIII", src, 0, 1000, 12, 0, 0)
    return struct.pack("!BBH", 0x80 | len(blocks), 201, len(body) // 4) + body


def _sdes(ssrc: int, cname: bytes) -> bytes:
    chunk = struct.pack("!IBB", ssrc, 1, len(cname)) + cname + b"\0"
    chunk += bytes(-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk


def _bye(*ssrcs: int) -> bytes:
    return struct.pack(f"!BBH{len(ssrcs)}I", 0x80 | len(ssrcs), 203, len(ssrcs), *ssrcs)


def test_parse_sr_sdes_compound() -> None:
    data = _sr(SIP_SSRC, 123456, [BROWSER_SSRC]) + _sdes(SIP_SSRC, b"sip@host")
    sr, sdes = parse_compound_untrusted(data)
    assert sr.packet_type == RtcpType.SR
    assert sr.ssrc == SIP_SSRC
    assert sr.count == 1
    assert sr.sender_info is not None
    assert (sr.sender_info.rtp_timestamp, sr.sender_info.packet_count, sr.sender_info.octet_count) == (
        123456,
        50,
        8000,
    )
    (block,) = sr.reports
    assert block.ssrc == BROWSER_SSRC
    assert block.fraction_lost == 3
    assert block.cumulative_lost == -2
    assert (block.highest_sequence, block.jitter, block.last_sr, block.delay_since_last_sr) == (
        1000,
        12,
        0xAABBCCDD,
        65536,
    )
    assert sdes.packet_type == RtcpType.SDES
    assert sdes.ssrcs == (SIP_SSRC,)
    assert sr.raw + sdes.raw == data
    assert [(pt, c, off) for pt, c, off, _ in walk_untrusted(data)] == [(200, 1, 0), (202, 1, 52)]


def test_rewrite_sip_to_browser_maps_sender_and_sr_timestamp() -> None:
    data = bytearray(_sr(SIP_SSRC, 1000, [BROWSER_SSRC]) + _sdes(SIP_SSRC, b"x") + _bye(SIP_SSRC))
    n = rewrite_ssrcs(data, {SIP_SSRC: OUR_SSRC}, {SIP_SSRC: 500})
    assert n == 3
    sr, sdes, bye = parse_compound_untrusted(data)
    assert sr.ssrc == OUR_SSRC
    assert sr.reports[0].ssrc == BROWSER_SSRC
    assert sr.sender_info is not None
    assert sr.sender_info.rtp_timestamp == 1500
    assert sdes.ssrcs == (OUR_SSRC,)
    assert bye.ssrcs == (OUR_SSRC,)


def test_rewrite_browser_to_sip_maps_report_blocks_and_feedback() -> None:
    pli = struct.pack("!BBHII", 0x81, 206, 2, BROWSER_SSRC, OUR_SSRC)
    data = bytearray(_rr(BROWSER_SSRC, [OUR_SSRC, 0x44]) + _sdes(BROWSER_SSRC, b"{cname}") + pli)
    assert rewrite_ssrcs(data, {OUR_SSRC: SIP_SSRC}) == 2
    rr, _sdes_pkt, fb = parse_compound_untrusted(data)
    assert rr.ssrc == BROWSER_SSRC
    assert [b.ssrc for b in rr.reports] == [SIP_SSRC, 0x44]
    assert fb.ssrcs == (BROWSER_SSRC, SIP_SSRC)


def test_timestamp_delta_wraps() -> None:
    data = bytearray(_sr(SIP_SSRC, 0xFFFFFFF0, []))
    rewrite_ssrcs(data, {SIP_SSRC: OUR_SSRC}, {SIP_SSRC: 0x20})
    info = parse_compound_untrusted(data)[0].sender_info
    assert info is not None
    assert info.rtp_timestamp == 0x10


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x80\xc8", "too short"),
        (b"\x40\xc9\x00\x01\x00\x00\x00\x00", "version 1"),
        (b"\x80\xc9\x00\x05\x00\x00\x00\x00", "claims 24 bytes"),
        (b"\x80\x60\x00\x01\x00\x00\x00\x00", "outside 192-223"),
        (b"\xa0\xc9\x00\x01\x00\x00\x00\x00" + _bye(1), "padding bit"),
        (b"\x81\xc9\x00\x01\x00\x00\x00\x00", "overruns"),
        (_rr(1, []) + b"\x80\xca", "trailing 2 bytes"),
        (b"\x81\xca\x00\x03\x00\x00\x00\x01\x01\x09ab\x00\x00\x00\x00", "SDES item"),
        (b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x02ab", "not terminated"),
        (b"\x82\xcb\x00\x01\x00\x00\x00\x01", "BYE with 2"),
        (b"\x81\xcd\x00\x01\x00\x00\x00\x01", "feedback"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(RtpParseError, match=message):
        parse_compound_untrusted(data)
    buf = bytearray(data)
    with pytest.raises(RtpParseError):
        rewrite_ssrcs(buf, {0: 1, 1: 2})
    assert buf == data  # validated before any write


@settings(deadline=None)
@given(st.binary(max_size=120))
def test_untrusted_raises_only_parse_error(data: bytes) -> None:
    try:
        packets = parse_compound_untrusted(data)
    except RtpParseError:
        return
    assert b"".join(p.raw for p in packets) == data
    buf = bytearray(data)
    rewrite_ssrcs(buf, {s: s ^ 1 for p in packets for s in p.ssrcs})
    assert len(buf) == len(data)
