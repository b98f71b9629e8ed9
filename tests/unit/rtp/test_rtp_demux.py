"""RFC 7983 / RFC 5761 demultiplexing table, byte by byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtp.demux import DemuxCounters, PacketKind, classify


def expected(first: int, second: int) -> PacketKind:
    """The RFC 7983 section 7 table, written out independently of the implementation."""
    if first in range(0, 4):
        return PacketKind.STUN
    if first in range(20, 64):
        return PacketKind.DTLS
    if first in range(128, 192):
        return PacketKind.RTCP if (second & 0x7F) in range(64, 96) else PacketKind.RTP
    return PacketKind.UNKNOWN


@pytest.mark.parametrize("first", range(256))
def test_every_first_byte(first: int) -> None:
    for second in (0, 0x00 | 0x80, 8, 96, 111, 126, 200, 201, 223, 224, 63 | 0x80):
        assert classify(bytes([first, second]) + bytes(10)) is expected(first, second)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (bytes.fromhex("000100582112a442"), PacketKind.STUN),  # Binding request
        (bytes.fromhex("16fefd0000"), PacketKind.DTLS),  # handshake record, DTLS 1.2
        (bytes.fromhex("17fefd0001"), PacketKind.DTLS),  # application data
        (bytes.fromhex("15fefd0000"), PacketKind.DTLS),  # alert
        (bytes.fromhex("8000000100000000deadbeef"), PacketKind.RTP),  # PCMU
        (bytes.fromhex("8080000100000000deadbeef"), PacketKind.RTP),  # PCMU + marker
        (bytes.fromhex("80e0000100000000deadbeef"), PacketKind.RTP),  # PT 96 + marker (224)
        (bytes.fromhex("80c80006deadbeef"), PacketKind.RTCP),  # SR
        (bytes.fromhex("81c90007deadbeef"), PacketKind.RTCP),  # RR with one block
        (bytes.fromhex("81cb0001deadbeef"), PacketKind.RTCP),  # BYE
        (bytes.fromhex("8fcd0004"), PacketKind.RTCP),  # transport feedback (205)
        (bytes.fromhex("10000000"), PacketKind.UNKNOWN),  # ZRTP
        (bytes.fromhex("40000000"), PacketKind.UNKNOWN),  # TURN channel data
        (bytes.fromhex("c0000000"), PacketKind.UNKNOWN),  # RTP version 3
        (bytes.fromhex("80"), PacketKind.UNKNOWN),  # truncated RTP
        (b"", PacketKind.UNKNOWN),
    ],
)
def test_captured_shapes(data: bytes, kind: PacketKind) -> None:
    assert classify(data) is kind
    assert classify(bytearray(data)) is kind
    assert classify(memoryview(data)) is kind


@given(st.binary(max_size=64))
def test_classify_is_total(data: bytes) -> None:
    kind = classify(data)
    assert kind is (expected(data[0], data[1] if len(data) > 1 else 0) if data else PacketKind.UNKNOWN) or (
        len(data) == 1 and kind is PacketKind.UNKNOWN
    )


def test_counters() -> None:
    c = DemuxCounters()
    for kind in [*PacketKind, PacketKind.RTP]:
        c.count(kind)
    assert (c.stun, c.dtls, c.rtp, c.rtcp, c.unknown) == (1, 1, 2, 1, 1)
