"""rtp.latch: which SIP-side source the media is taken from (symmetric RTP, strict learning)."""

from __future__ import annotations

import struct

import pytest

from rtp.latch import LEARNING_PACKETS, MAX_CANDIDATES, SourceLatch, Verdict

SDP_RTP = ("192.0.2.10", 4000)
SDP_RTCP = ("192.0.2.10", 4001)
PHONE_NAT = ("192.0.2.10", 61000)  # the SDP's IP, another port
MEDIA_SERVER = ("198.51.100.7", 30000)  # another IP (a PBX's media server)
SPRAYER = ("203.0.113.66", 5555)


def rtp(seq: int, *, pt: int = 0, ssrc: int = 0x2222, ts: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts, ssrc) + b"\xff" * 160


RR = struct.pack("!BBHI", 0x80, 201, 1, 0x2222)  # an empty receiver report


def latch(learning_packets: int = LEARNING_PACKETS) -> SourceLatch:
    return SourceLatch(SDP_RTP, SDP_RTCP, [0, 101], learning_packets=learning_packets)


def test_the_sdp_address_latches_at_once() -> None:
    lt = latch()
    assert lt.rtp_untrusted(rtp(1), SDP_RTP) is Verdict.ACCEPT
    assert lt.rtp_source == SDP_RTP
    assert lt.counters.latched == 0  # the SDP's own address is no latch event


def test_the_sdp_ip_from_another_port_latches_at_once() -> None:
    lt = latch()
    assert lt.rtp_untrusted(rtp(1), PHONE_NAT) is Verdict.ACCEPT
    assert lt.rtp_source == PHONE_NAT
    assert lt.counters.latched == 1
    # latched: the SDP's own port is now just another source
    assert lt.rtp_untrusted(rtp(2), SDP_RTP) is Verdict.UNKNOWN_SOURCE


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x80",
        b"\x00\x01" + bytes(30),  # STUN-shaped
        b"\x40" + bytes(20),  # RTP version 1
        rtp(1, pt=8),  # a payload type the answer did not negotiate
        rtp(1, pt=96),
        struct.pack("!BBHI", 0x80, 200, 1, 1) + bytes(20),  # RTCP on the RTP port
        b"\xa0" + bytes(11),  # padding bit with a zero count
    ],
)
def test_nothing_invalid_latches_even_from_the_sdp_address(datagram: bytes) -> None:
    lt = latch()
    assert lt.rtp_untrusted(datagram, SDP_RTP) is Verdict.INVALID
    assert lt.rtp_untrusted(datagram, SPRAYER) is Verdict.INVALID
    assert lt.rtp_source is None
    assert lt.counters.invalid == 2
    assert lt.rtp_untrusted(rtp(1), PHONE_NAT) is Verdict.ACCEPT  # the real phone still latches


def test_another_ip_latches_after_a_learning_run_of_consecutive_packets() -> None:
    lt = latch()
    verdicts = [lt.rtp_untrusted(rtp(500 + i), MEDIA_SERVER) for i in range(LEARNING_PACKETS)]
    assert verdicts == [Verdict.LEARNING] * (LEARNING_PACKETS - 1) + [Verdict.ACCEPT]
    assert lt.rtp_source == MEDIA_SERVER
    assert lt.counters.learning == LEARNING_PACKETS - 1
    assert lt.counters.latched == 1
    assert lt.rtp_untrusted(rtp(1), SPRAYER) is Verdict.UNKNOWN_SOURCE


@pytest.mark.parametrize(
    "sequence",
    [[10, 11, 13, 14], [10, 10, 11, 12], [10, 9, 8, 7], [10, 12, 14, 16]],
    ids=["gap", "duplicate", "backwards", "stride"],
)
def test_a_run_that_is_not_consecutive_does_not_latch(sequence: list[int]) -> None:
    lt = latch()
    assert all(lt.rtp_untrusted(rtp(s), MEDIA_SERVER) is Verdict.LEARNING for s in sequence)
    assert lt.rtp_source is None


def test_a_run_restarts_when_the_ssrc_changes_and_wraps_the_sequence() -> None:
    lt = latch()
    assert lt.rtp_untrusted(rtp(65534, ssrc=1), MEDIA_SERVER) is Verdict.LEARNING
    assert lt.rtp_untrusted(rtp(65535, ssrc=2), MEDIA_SERVER) is Verdict.LEARNING  # new SSRC: run 1
    verdicts = [lt.rtp_untrusted(rtp(s, ssrc=2), MEDIA_SERVER) for s in (0, 1, 2)]  # wraps
    assert verdicts == [Verdict.LEARNING, Verdict.LEARNING, Verdict.ACCEPT]


def test_nothing_foreign_learns_once_the_sdp_ip_has_sent() -> None:
    lt = latch()
    assert lt.rtp_untrusted(rtp(1), PHONE_NAT) is Verdict.ACCEPT
    verdicts = {lt.rtp_untrusted(rtp(100 + i), MEDIA_SERVER) for i in range(3 * LEARNING_PACKETS)}
    assert verdicts == {Verdict.UNKNOWN_SOURCE}
    assert lt.rtp_source == PHONE_NAT


def test_the_sdp_ip_takes_the_leg_back_from_a_learned_source() -> None:
    lt = latch()
    for i in range(LEARNING_PACKETS):
        lt.rtp_untrusted(rtp(i), SPRAYER)
    assert lt.rtp_source == SPRAYER
    assert lt.rtp_untrusted(rtp(1), SDP_RTP) is Verdict.ACCEPT
    assert lt.rtp_source == SDP_RTP
    assert lt.rtp_untrusted(rtp(LEARNING_PACKETS), SPRAYER) is Verdict.UNKNOWN_SOURCE


def test_a_half_learned_run_is_forgotten_when_the_sdp_ip_sends() -> None:
    lt = latch()
    for i in range(LEARNING_PACKETS - 1):
        lt.rtp_untrusted(rtp(i), SPRAYER)
    assert lt.rtp_untrusted(rtp(7), SDP_RTP) is Verdict.ACCEPT
    assert lt.rtp_untrusted(rtp(LEARNING_PACKETS - 1), SPRAYER) is Verdict.UNKNOWN_SOURCE
    assert lt.rtp_source == SDP_RTP


def test_interleaved_sprayers_do_not_reset_a_real_learning_run() -> None:
    lt = latch()
    for i in range(LEARNING_PACKETS - 1):
        assert lt.rtp_untrusted(rtp(i), MEDIA_SERVER) is Verdict.LEARNING
        for k in range(MAX_CANDIDATES - 2):
            assert lt.rtp_untrusted(rtp(1000 * k + 7 * i), (f"203.0.113.{k}", 9)) is Verdict.LEARNING
    assert lt.rtp_untrusted(rtp(LEARNING_PACKETS - 1), MEDIA_SERVER) is Verdict.ACCEPT


def test_rtcp_from_the_sdp_rtcp_address_or_the_latched_rtp_host_only() -> None:
    lt = latch()
    assert lt.rtcp_untrusted(RR, PHONE_NAT) is Verdict.UNKNOWN_SOURCE  # no RTP latched yet
    assert lt.rtp_untrusted(rtp(1), PHONE_NAT) is Verdict.ACCEPT
    assert lt.rtcp_untrusted(RR, SPRAYER) is Verdict.UNKNOWN_SOURCE  # another host
    assert lt.rtcp_untrusted(b"\x80\xc9", (PHONE_NAT[0], 61001)) is Verdict.INVALID  # not RTCP
    assert lt.rtcp_untrusted(RR, (PHONE_NAT[0], 61001)) is Verdict.ACCEPT
    assert lt.rtcp_source == (PHONE_NAT[0], 61001)
    assert lt.rtcp_untrusted(RR, (PHONE_NAT[0], 61002)) is Verdict.UNKNOWN_SOURCE  # latched once


def test_rtcp_from_the_sdp_address_is_taken() -> None:
    lt = latch()
    assert lt.rtcp_untrusted(RR, SDP_RTCP) is Verdict.ACCEPT
    assert lt.rtcp_untrusted(RR, SPRAYER) is Verdict.UNKNOWN_SOURCE


def test_new_payload_types_keep_the_latch() -> None:
    lt = latch()
    lt.rtp_untrusted(rtp(1), PHONE_NAT)
    lt.set_payload_types([8])
    assert lt.rtp_source == PHONE_NAT
    assert lt.rtp_untrusted(rtp(1, pt=8), PHONE_NAT) is Verdict.ACCEPT
    fresh = SourceLatch(SDP_RTP, SDP_RTCP, [8])
    assert fresh.rtp_untrusted(rtp(1, pt=0), SDP_RTP) is Verdict.INVALID


def test_learning_packets_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SourceLatch(SDP_RTP, SDP_RTCP, [0], learning_packets=0)
