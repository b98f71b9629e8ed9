"""RFC 4733 telephone-event payloads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.dtmf import DtmfEvent, events_for_digit
from rtp.errors import DtmfParseError


def test_parse_rfc4733_example() -> None:
    # Event '5' ending, volume 10 (-10 dBm0), duration 800 (100 ms at 8 kHz)
    ev = DtmfEvent.parse_untrusted(bytes.fromhex("058a0320"))
    assert ev == DtmfEvent(5, True, 10, 800)
    assert ev.digit == "5"
    assert bytes(ev) == bytes.fromhex("058a0320")


def test_reserved_bit_is_ignored_and_not_sent() -> None:
    ev = DtmfEvent.parse_untrusted(bytes.fromhex("0bca00a0"))
    assert (ev.event, ev.end, ev.volume, ev.duration, ev.digit) == (11, True, 10, 160, "#")
    assert bytes(ev) == bytes.fromhex("0b8a00a0")


def test_digits_and_other_events() -> None:
    assert [DtmfEvent(i).digit for i in range(17)] == [*"0123456789*#ABCD", None]


@pytest.mark.parametrize("size", [0, 3, 5, 8])
def test_wrong_length(size: int) -> None:
    with pytest.raises(DtmfParseError, match=f"{size} bytes, expected 4"):
        DtmfEvent.parse_untrusted(bytes(size))


@settings(deadline=None)
@given(st.binary(max_size=6))
def test_untrusted(data: bytes) -> None:
    try:
        ev = DtmfEvent.parse_untrusted(data)
    except DtmfParseError:
        return
    assert DtmfEvent.parse_untrusted(bytes(ev)) == ev
    assert bytes(ev)[0] == data[0]


def test_events_for_digit() -> None:
    evs = events_for_digit("*", duration_ms=100)
    assert [e.duration for e in evs] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in evs] == [False] * 4 + [True] * 3
    assert {e.event for e in evs} == {10}
    assert events_for_digit("d", duration_ms=10)[0] == DtmfEvent(15, True, 10, 160)
    with pytest.raises(ValueError, match="not a DTMF digit"):
        events_for_digit("x")
    with pytest.raises(ValueError, match="overflows"):
        events_for_digit("1", duration_ms=9000)
    with pytest.raises(ValueError, match="volume"):
        DtmfEvent(1, volume=64)
