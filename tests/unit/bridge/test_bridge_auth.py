"""bridge.auth: one answer for unknown extension and wrong password; throttle and lock-out driven by `now`."""

from __future__ import annotations

import pytest

from bridge.auth import MAX_DELAY, Authenticator, AuthOutcome, AuthResult, Pending, ThrottlePolicy
from bridge.extensions import ExtensionTable, make_extension

FAST = 2**4
TABLE = ExtensionTable(
    (
        make_extension("100", "right", realm="r", n=FAST),
        make_extension("101", "other", realm="r", n=FAST),
    )
)
POLICY = ThrottlePolicy(max_failures=3, window=60.0, delay=1.0, lockout_failures=6, lockout=600.0)


def _auth(**kwargs: object) -> Authenticator:
    dummy = make_extension("dummy", "\x00", realm="r", n=FAST)
    return Authenticator(TABLE, policy=POLICY, dummy=dummy, **kwargs)  # type: ignore[arg-type]


def test_accept_and_reject() -> None:
    auth = _auth()
    ok = auth.check(source="10.0.0.1", extension="100", password="right", now=0.0)
    assert ok == AuthResult(AuthOutcome.ACCEPTED, "100")
    assert ok.allowed
    assert ok.mccp_code is None
    bad = auth.check(source="10.0.0.1", extension="100", password="wrong", now=1.0)
    assert bad == AuthResult(AuthOutcome.REJECTED, "100")
    assert not bad.allowed
    assert bad.mccp_code == 403


def test_unknown_extension_and_wrong_password_answer_the_same() -> None:
    unknown = _auth().check(source="10.0.0.1", extension="999", password="right", now=0.0)
    wrong = _auth().check(source="10.0.0.1", extension="999", password="x", now=0.0)
    assert unknown == AuthResult(AuthOutcome.REJECTED, "999") == wrong
    # a password right for another extension does not open this one
    assert _auth().check(source="s", extension="101", password="right", now=0).outcome is AuthOutcome.REJECTED


def test_unknown_extension_is_checked_against_the_dummy() -> None:
    auth = _auth()
    pending = auth.admit(source="s", extension="999", now=0.0)
    assert isinstance(pending, Pending)
    assert pending.entry.number == "dummy"
    assert not pending.known
    # even the dummy's own password does not pass for an unknown number
    assert pending.verify("\x00") is False
    known = auth.admit(source="s", extension="100", now=0.0)
    assert isinstance(known, Pending)
    assert known.verify("right") is True


def test_delay_grows_then_lockout_logged_once_then_expires() -> None:
    auth = _auth()
    results = [auth.check(source="10.0.0.1", extension="100", password="bad", now=float(t)) for t in range(6)]
    assert [r.delay for r in results[:5]] == [0.0, 0.0, 0.0, 1.0, 2.0]
    assert [r.outcome for r in results[:5]] == [AuthOutcome.REJECTED] * 5
    # the 6th failure starts the lock-out of both the source and the extension, reported once
    assert results[5].outcome is AuthOutcome.LOCKED_OUT
    assert results[5].mccp_code == 429
    assert results[5].lockout_started == ("source 10.0.0.1", "extension 100")
    assert results[5].delay == 4.0
    # during the lock-out even the right password is refused, without a password check and silently
    during = auth.check(source="10.0.0.1", extension="100", password="right", now=100.0)
    assert during == AuthResult(AuthOutcome.LOCKED_OUT, "100", retry_after=505.0)
    assert auth.admit(source="10.0.0.1", extension="100", now=100.0) == during
    assert auth.is_locked(source="10.0.0.1", now=100.0)
    assert auth.is_locked(extension="100", now=100.0)
    # another source cannot reach the locked extension either; the locked source cannot reach another one
    assert (
        auth.check(source="10.0.0.2", extension="100", password="right", now=101).outcome
        is AuthOutcome.LOCKED_OUT
    )
    assert (
        auth.check(source="10.0.0.1", extension="101", password="other", now=101).outcome
        is AuthOutcome.LOCKED_OUT
    )
    # the lock-out ends, with the failure count starting afresh
    after = auth.check(source="10.0.0.1", extension="100", password="right", now=605.0)
    assert after == AuthResult(AuthOutcome.ACCEPTED, "100")


def test_right_password_is_delayed_too_when_throttled() -> None:
    auth = _auth()
    for t in range(4):
        auth.check(source="10.0.0.1", extension="100", password="bad", now=float(t))
    ok = auth.check(source="10.0.0.1", extension="100", password="right", now=5.0)
    assert ok == AuthResult(AuthOutcome.ACCEPTED, "100", delay=2.0)


def test_failures_leave_the_window() -> None:
    auth = _auth()
    for t in range(5):
        auth.check(source="10.0.0.1", extension="100", password="bad", now=float(t))
    assert auth.check(source="10.0.0.1", extension="100", password="right", now=30.0).delay == 4.0
    assert auth.check(source="10.0.0.1", extension="100", password="right", now=60.5).delay == 2.0
    assert auth.check(source="10.0.0.1", extension="100", password="right", now=65.0).delay == 0.0


def test_per_source_counts_across_extensions() -> None:
    auth = _auth()
    for t in range(6):
        result = auth.check(source="10.0.0.9", extension=f"9{t}", password="bad", now=float(t))
    assert result.lockout_started == ("source 10.0.0.9",)
    assert auth.check(source="10.0.0.8", extension="100", password="right", now=7.0).allowed


def test_delay_is_capped() -> None:
    policy = ThrottlePolicy(max_failures=1, window=1e6, delay=1.0, lockout_failures=1000, lockout=1.0)
    auth = Authenticator(TABLE, policy=policy, dummy=make_extension("d", "x", realm="r", n=FAST))
    for t in range(40):
        result = auth.check(source="s", extension="100", password="bad", now=float(t))
    assert result.delay == MAX_DELAY


def test_upstream_mode_leaves_the_password_to_the_upstream() -> None:
    auth = _auth(upstream=True)
    result = auth.check(source="10.0.0.1", extension="5551234", password="whatever", now=0.0)
    assert result == AuthResult(AuthOutcome.UPSTREAM, "5551234")
    assert result.allowed
    # failures reported back by the call handler (upstream said 401/403) count and lock out
    for t in range(6):
        last = auth.record_failure(source="10.0.0.1", extension="5551234", now=float(t))
    assert last.outcome is AuthOutcome.LOCKED_OUT
    assert (
        auth.check(source="10.0.0.1", extension="5551234", password="x", now=10).outcome
        is AuthOutcome.LOCKED_OUT
    )


def test_reloaded_table_keeps_throttle_state() -> None:
    auth = _auth()
    for t in range(4):
        auth.check(source="s", extension="100", password="bad", now=float(t))
    auth.replace_table(ExtensionTable((make_extension("100", "new", realm="r", n=FAST),)))
    result = auth.check(source="s", extension="100", password="new", now=5.0)
    assert result == AuthResult(AuthOutcome.ACCEPTED, "100", delay=2.0)
    assert len(auth.table) == 1


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="max_failures <= lockout_failures"):
        ThrottlePolicy(max_failures=5, lockout_failures=4)


def test_tracking_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import bridge.auth as mod

    monkeypatch.setattr(mod, "MAX_TRACKED", 50)
    auth = _auth()
    for i in range(500):
        auth.record_failure(source=f"10.1.{i // 256}.{i % 256}", extension="", now=float(i))
    assert len(auth._sources) <= 50
