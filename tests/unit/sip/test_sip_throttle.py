"""sip.throttle: the default guard against REGISTER digest guessing, with `now` passed in."""

from __future__ import annotations

import pytest

from sip.throttle import DigestThrottle, ThrottleFigures

FIG = ThrottleFigures(source_failures=3, user_failures=5, window=60.0, lockout=100.0, max_tracked=50)


def test_a_source_is_locked_after_its_threshold_and_released_after_the_lockout() -> None:
    t = DigestThrottle(FIG)
    assert t.record_failure(source="192.0.2.1", extension="100", now=0.0) == ()
    assert t.record_failure(source="192.0.2.1", extension="101", now=1.0) == ()
    assert not t.is_locked(source="192.0.2.1", extension="102", now=2.0)
    assert t.record_failure(source="192.0.2.1", extension="102", now=2.0) == ("source 192.0.2.1",)
    assert t.is_locked(source="192.0.2.1", extension="999", now=2.0)
    assert not t.is_locked(source="192.0.2.2", extension="100", now=2.0)  # neither key locked
    assert t.is_locked(source="192.0.2.1", extension="", now=101.9)
    assert not t.is_locked(source="192.0.2.1", extension="", now=102.0)
    # the count starts again from zero after a lock-out
    assert t.record_failure(source="192.0.2.1", extension="100", now=103.0) == ()


def test_failures_outside_the_window_do_not_count() -> None:
    t = DigestThrottle(FIG)
    t.record_failure(source="192.0.2.1", extension="100", now=0.0)
    t.record_failure(source="192.0.2.1", extension="100", now=30.0)
    assert t.record_failure(source="192.0.2.1", extension="100", now=60.5) == ()  # 0.0 has left
    assert t.record_failure(source="192.0.2.1", extension="100", now=61.0) == ("source 192.0.2.1",)


def test_many_sources_lock_the_user_out() -> None:
    t = DigestThrottle(FIG)
    started = [t.record_failure(source=f"192.0.2.{k}", extension="100", now=float(k)) for k in range(5)]
    assert started == [(), (), (), (), ("user 100",)]
    assert t.is_locked(source="198.51.100.9", extension="100", now=5.0)
    assert not t.is_locked(source="198.51.100.9", extension="101", now=5.0)


def test_memory_is_bounded_under_a_flood_of_keys() -> None:
    t = DigestThrottle(FIG)
    for k in range(1000):
        t.record_failure(source=f"10.0.{k // 256}.{k % 256}", extension=f"u{k}", now=k / 100)
    assert t.tracked() <= 2 * FIG.max_tracked


def test_a_locked_key_survives_pruning_by_unlocked_ones() -> None:
    t = DigestThrottle(FIG)
    for _ in range(3):
        t.record_failure(source="192.0.2.1", extension="", now=0.0)
    for k in range(200):
        t.record_failure(source=f"10.0.0.{k}", extension="", now=1.0)
    assert t.is_locked(source="192.0.2.1", extension="", now=2.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"source_failures": 0}, {"user_failures": 0}, {"window": 0.0}, {"lockout": -1.0}, {"max_tracked": 0}],
)
def test_bad_figures_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ThrottleFigures(**kwargs)  # type: ignore[arg-type]
