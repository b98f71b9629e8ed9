"""Loss and jitter as the relay measures them (rtp.reception: RFC 3550 A.1, A.3, A.8): crafted
sequences with gaps, reordering, duplicates, wrap, restarts and SSRC changes, and jitter values
worked out by hand; then the same through `Relay` in both directions with real SRTP."""

from __future__ import annotations

import pytest
from tests.unit.rtp.test_rtp_relay import BROWSER_SSRC, Browser, _relay, _sip

from rtp.packet import RtpPacket
from rtp.reception import ReceptionStats

CLOCK = 8000
SSRC_A, SSRC_B = 0x1111, 0x2222


def _feed(stats: ReceptionStats, seqs: list[int], ssrc: int = SSRC_A) -> None:
    """Packets at 20 ms spacing with timestamps that match (no jitter)."""
    for i, seq in enumerate(seqs):
        stats.packet(ssrc, seq, seq * 160, None, CLOCK)
        del i


@pytest.mark.parametrize(
    ("seqs", "expected", "lost"),
    [
        ([1, 2, 3, 4, 5], 5, 0),
        ([1, 2, 3, 6, 7], 7, 2),  # a gap of two
        ([1, 2, 4, 3, 5], 5, 0),  # reordered: late, not lost
        ([1, 2, 2, 3], 3, -1),  # a duplicate counts as received (A.3: lost may be negative)
        ([65533, 65534, 65535, 0, 1], 5, 0),  # wrap
        ([65534, 1, 2], 5, 2),  # a gap across the wrap (65535 and 0 lost)
        ([10, 11, 12, 5000, 13, 14], 5, 0),  # one stray jump: not counted, the stream goes on
        ([10, 11, 12, 5000, 5001, 5003], 6, 1),  # a restart at 5000: re-sync on 5001 (5000 dropped)
        ([10, 11, 12, 5, 13], 4, -1),  # 5 is older than the first: received, never expected
        ([5, 6, 7, 9], 5, 1),
    ],
)
def test_expected_and_lost(seqs: list[int], expected: int, lost: int) -> None:
    stats = ReceptionStats()
    _feed(stats, seqs)
    assert (stats.expected, stats.lost) == (expected, lost)


def test_many_wraps_count_cycles() -> None:
    stats = ReceptionStats()
    seq = 60000
    for _ in range(3 * 65536 // 1000):
        stats.packet(SSRC_A, seq & 0xFFFF, 0, None, CLOCK)
        seq += 1000  # a gap of 999 each time, within MAX_DROPOUT
    sent = 3 * 65536 // 1000
    assert stats.received == sent
    assert stats.expected == (sent - 1) * 1000 + 1
    assert stats.lost == stats.expected - sent


def test_ssrc_change_starts_a_new_source_and_stragglers_go_to_the_old_one() -> None:
    stats = ReceptionStats()
    _feed(stats, [1, 2, 3, 5], SSRC_A)  # 4 lost
    _feed(stats, [40000, 40001, 40003], SSRC_B)  # 40002 lost; no jump counted between sources
    _feed(stats, [4], SSRC_A)  # the old source's straggler fills its gap
    assert stats.expected == 5 + 4
    assert stats.received == 5 + 3
    assert stats.lost == 1


def test_many_sources_are_folded_into_the_totals() -> None:
    stats = ReceptionStats()
    for ssrc in range(40):
        _feed(stats, [100, 101, 103], ssrc)  # one lost each
    assert (stats.expected, stats.received, stats.lost) == (40 * 4, 40 * 3, 40)


def test_jitter_worked_by_hand() -> None:
    """20 ms packets (160 timestamp units at 8 kHz); packet 4 arrives 10 ms late (transit +80):
    J = 0 + (80 - 0)/16 = 5, then packet 5 on time (D = 80): J = 5 + (80 - 5)/16 = 9.6875,
    then on time again (D = 0): J = 9.6875 - 9.6875/16 = 9.08203125 timestamp units."""
    stats = ReceptionStats()
    arrivals = [0.0, 0.02, 0.04, 0.06, 0.09, 0.10, 0.12]
    values = []
    for i, t in enumerate(arrivals):
        stats.packet(SSRC_A, 100 + i, 1000 + 160 * i, 50.0 + t, CLOCK)
        values.append(stats.jitter * CLOCK)
    assert values[:4] == [0.0, 0.0, 0.0, 0.0]
    assert values[4:] == pytest.approx([5.0, 9.6875, 9.08203125])
    assert stats.max_jitter * CLOCK == pytest.approx(9.6875)


def test_jitter_converges_to_the_mean_deviation() -> None:
    """Arrivals alternating 5 ms early and late: |D| is always 10 ms = 80 units, so J -> 80."""
    stats = ReceptionStats()
    for i in range(400):
        t = i * 0.02 + (0.005 if i % 2 else -0.005)
        stats.packet(SSRC_A, i, 160 * i, 10.0 + t, CLOCK)
    assert stats.jitter * CLOCK == pytest.approx(80.0, rel=1e-6)
    assert stats.lost == 0


def test_jitter_across_the_timestamp_wrap_is_zero() -> None:
    stats = ReceptionStats()
    for i in range(10):
        stats.packet(SSRC_A, i, (2**32 - 800 + 160 * i) & 0xFFFFFFFF, 7.0 + 0.02 * i, CLOCK)
    assert stats.jitter == pytest.approx(0.0, abs=1e-9)


def test_jitter_is_per_source() -> None:
    """A new SSRC with its own random timestamp base starts from its own transit: no spike."""
    stats = ReceptionStats()
    for i in range(5):
        stats.packet(SSRC_A, i, 160 * i, 1.0 + 0.02 * i, CLOCK)
    for i in range(5):
        stats.packet(SSRC_B, 9000 + i, 123456789 + 160 * i, 1.1 + 0.02 * i, CLOCK)
    assert stats.jitter == pytest.approx(0.0, abs=1e-9)
    assert stats.max_jitter == pytest.approx(0.0, abs=1e-9)


def test_relay_measures_the_sip_side_across_an_ssrc_change() -> None:
    relay = _relay()
    now = 100.0
    for seq in (10, 11, 13, 14):  # 12 lost
        assert relay.sip_rtp(_sip(0, seq, seq * 160, SSRC_A), now + seq * 0.02) is not None
    for seq in (500, 501, 502, 504):  # the PBX switched sources; 503 lost
        assert relay.sip_rtp(_sip(0, seq, 777 + seq * 160, SSRC_B), now + 0.3 + seq * 0.02) is not None
    assert relay.stream_changes == 1
    c = relay.to_browser
    assert (c.expected, c.lost, c.packets) == (5 + 5, 2, 8)
    assert c.jitter == pytest.approx(0.0, abs=1e-9)
    assert relay.to_sip.expected == 0


def test_relay_measures_the_browser_side_from_decrypted_packets() -> None:
    relay, browser = _relay(), Browser()
    late = {3: 0.03}  # packet index 3 arrives 30 ms late: transit +240 units -> J = 15
    sent = []
    for i in range(6):
        packet = browser.rtp(0)
        sent.append(packet)
        if i == 4:
            continue  # lost on the way
        assert relay.browser_rtp(packet, now=20.0 + 0.02 * i + late.get(i, 0.0)) is not None
    c = relay.to_sip
    assert (c.expected, c.lost, c.packets) == (6, 1, 5)
    # i=3: D=240 -> J=15; i=5 (after the gap, on time): D=240 -> J = 15 + (240-15)/16
    assert c.jitter * 8000 == pytest.approx(15 + (240 - 15) / 16)
    assert RtpPacket.parse_untrusted(relay.browser_rtp(browser.rtp(0), now=20.2) or b"").ssrc == BROWSER_SSRC
