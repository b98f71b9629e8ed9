"""RTP header parsing, serializing and in-place rewriting (RFC 3550 §5.1, RFC 5761 §4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp import packet
from rtp.errors import RtpParseError
from rtp.packet import RtpPacket

# A Chromium Opus packet header with the one-byte header extension (audio level, abs-send-time,
# transport-cc, mid) as captured on the wire, shortened payload.
CHROME_LIKE = bytes.fromhex("90ef1a2b0001e2406f3a1c08bede000310ff22010203320004000000deadbeef")


def test_parse_minimal_packet() -> None:
    data = bytes.fromhex("80000001000000a0deadbeef") + b"\xff" * 160
    pkt = RtpPacket.parse_untrusted(data)
    assert (pkt.payload_type, pkt.sequence, pkt.timestamp, pkt.ssrc) == (0, 1, 160, 0xDEADBEEF)
    assert pkt.payload == b"\xff" * 160
    assert not pkt.marker
    assert pkt.csrcs == ()
    assert pkt.extension is None
    assert pkt.padding == 0
    assert bytes(pkt) == data


def test_parse_extension_marker_csrc_padding() -> None:
    pkt = RtpPacket.parse_untrusted(CHROME_LIKE)
    assert pkt.marker
    assert pkt.payload_type == 111
    assert pkt.sequence == 0x1A2B
    assert pkt.timestamp == 0x1E240
    assert pkt.ssrc == 0x6F3A1C08
    assert pkt.extension == (0xBEDE, bytes.fromhex("10ff22010203320004000000"))
    assert pkt.payload == bytes.fromhex("deadbeef")
    assert bytes(pkt) == CHROME_LIKE
    full = RtpPacket(
        payload_type=8,
        sequence=65535,
        timestamp=0xFFFFFFFF,
        ssrc=1,
        payload=b"abc",
        marker=True,
        csrcs=(1, 2, 3),
        extension=(0x1000, b"\x01\x02\x03\x04"),
        padding=5,
    )
    data = bytes(full)
    assert len(data) == 12 + 12 + 8 + 3 + 5
    assert RtpPacket.parse_untrusted(data) == full
    assert packet.check_untrusted(data) == (32, 35)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short: 0 bytes"),
        (bytes.fromhex("8000000100000000deadbe"), "too short: 11 bytes"),
        (bytes.fromhex("4000000100000000deadbeef"), "RTP version 1"),
        (bytes.fromhex("8f00000100000000deadbeef"), "exceeds"),
        (bytes.fromhex("9000000100000000deadbeef00"), "extension header truncated"),
        (bytes.fromhex("9000000100000000deadbeefbede0002abcd"), "exceeds"),
        (bytes.fromhex("a000000100000000deadbeef00"), "padding count 0"),
        (bytes.fromhex("a000000100000000deadbeef0105"), "padding count 5"),
    ],
)
def test_malformed_packets(data: bytes, message: str) -> None:
    with pytest.raises(RtpParseError, match=message):
        RtpPacket.parse_untrusted(data)


@settings(deadline=None)
@given(st.binary(max_size=80))
def test_parse_untrusted_raises_only_parse_error(data: bytes) -> None:
    try:
        pkt = RtpPacket.parse_untrusted(data)
    except RtpParseError:
        return
    if not pkt.padding:  # pad bytes are normalized to zeros on output
        assert bytes(pkt) == data
    assert RtpPacket.parse_untrusted(bytes(pkt)) == pkt


@settings(deadline=None)
@given(
    pt=st.integers(0, 127),
    seq=st.integers(0, 0xFFFF),
    ts=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15),
    payload=st.binary(max_size=64),
)
def test_round_trip(
    pt: int, seq: int, ts: int, ssrc: int, marker: bool, csrcs: list[int], payload: bytes
) -> None:
    pkt = RtpPacket(pt, seq, ts, ssrc, payload, marker, tuple(csrcs))
    assert RtpPacket.parse_untrusted(bytes(pkt)) == pkt


def test_in_place_setters_and_getters() -> None:
    buf = bytearray(CHROME_LIKE)
    view = memoryview(buf)
    packet.set_payload_type(view, 0)
    assert packet.get_payload_type(buf) == 0
    assert packet.get_marker(buf)
    packet.set_marker(buf, False)
    assert not packet.get_marker(buf)
    assert packet.get_payload_type(buf) == 0
    packet.set_marker(view, True)
    packet.set_sequence(view, 0x1_0005)
    packet.set_timestamp(view, 2**32 + 7)
    packet.set_ssrc(view, 0xCAFEBABE)
    assert (packet.get_sequence(buf), packet.get_timestamp(buf), packet.get_ssrc(buf)) == (5, 7, 0xCAFEBABE)
    pkt = RtpPacket.parse_untrusted(buf)
    assert (pkt.marker, pkt.payload_type, pkt.sequence, pkt.timestamp, pkt.ssrc) == (
        True,
        0,
        5,
        7,
        0xCAFEBABE,
    )
    assert pkt.payload == bytes.fromhex("deadbeef")


def test_rfc5761_rtp_rtcp_distinction() -> None:
    for rtcp_type in range(200, 208):
        assert packet.is_rtcp(bytes((0x80, rtcp_type)))
    assert packet.is_rtcp(bytes((0x80, 192)))
    assert packet.is_rtcp(bytes((0x80, 223)))
    for pt in (0, 8, 96, 101, 111, 126, 127):
        assert not packet.is_rtcp(bytes((0x80, pt)))
        assert not packet.is_rtcp(bytes((0x80, pt | 0x80)))  # marker set


def test_dataclass_validation() -> None:
    with pytest.raises(ValueError, match="payload type"):
        RtpPacket(128, 0, 0, 0)
    with pytest.raises(ValueError, match="CSRCs"):
        RtpPacket(0, 0, 0, 0, csrcs=tuple(range(16)))
    with pytest.raises(ValueError, match="multiple of 4"):
        RtpPacket(0, 0, 0, 0, extension=(1, b"abc"))
