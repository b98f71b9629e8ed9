"""`bridge.workers`: each worker's share of the ports (media slices, SIP port)."""

from __future__ import annotations

import itertools

import pytest

from bridge.workers import split_port_range, worker_sip_port


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16, 64])
def test_slices_are_disjoint_even_aligned_and_cover_the_range(count: int) -> None:
    low, high = 20000, 29999
    slices = split_port_range(low, high, count)
    assert len(slices) == count
    assert slices[0][0] == low
    assert slices[-1][1] == high
    for (_, a_high), (b_low, _) in itertools.pairwise(slices):
        assert a_high + 1 == b_low  # contiguous, no overlap
    for s_low, s_high in slices:
        assert s_low % 2 == 0  # RTP on even ports (RFC 3550 §11)
        assert s_high - s_low + 1 >= 4


def test_two_workers_split_the_default_range_in_halves() -> None:
    assert split_port_range(20000, 29999, 2) == [(20000, 24999), (25000, 29999)]
    assert split_port_range(20000, 20010, 2) == [(20000, 20003), (20004, 20010)]  # last takes the rest


def test_one_worker_keeps_any_range() -> None:
    assert split_port_range(30000, 30001, 1) == [(30000, 30001)]


def test_too_small_a_range_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match=r"rtp_ports 20000-20010 is too small for 3 workers"):
        split_port_range(20000, 20010, 3)


def test_sip_ports() -> None:
    assert [worker_sip_port(5060, i) for i in range(3)] == [5060, 5061, 5062]
    assert worker_sip_port(0, 5) == 0  # any free port
    with pytest.raises(ValueError, match="beyond 65535"):
        worker_sip_port(65535, 1)
