"""bridge.auth.KdfGate and authenticate(): a bounded login budget; cached logins skip it (issue 6)."""

from __future__ import annotations

import threading

import pytest
import trio.testing

import trio
from bridge.auth import (
    Authenticator,
    AuthOutcome,
    AuthResult,
    CredentialsCache,
    KdfBusy,
    KdfGate,
    ThrottlePolicy,
    authenticate,
)
from bridge.extensions import ExtensionTable, make_extension

FAST = 2**4
TABLE = ExtensionTable(
    (make_extension("100", "right", realm="r", n=FAST), make_extension("101", "other", realm="r", n=FAST))
)


def _auth() -> Authenticator:
    dummy = make_extension("dummy", "\x00", realm="r", n=FAST)
    policy = ThrottlePolicy(max_failures=3, window=60.0, delay=1.0, lockout_failures=6, lockout=600.0)
    return Authenticator(TABLE, policy=policy, dummy=dummy, cache=CredentialsCache(ttl=600.0))


class Blocked:
    """A password check that holds its worker thread until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, password: str) -> bool:
        self.started.set()
        assert self.release.wait(30), "never released"
        return password == "right"


async def _outcome(gate: KdfGate, verify: object, password: str, out: list[object]) -> None:
    try:
        out.append(await gate.run(verify, password))  # type: ignore[arg-type]
    except KdfBusy as exc:
        out.append((str(exc), trio.current_time()))


async def test_beyond_the_cap_logins_wait_a_bounded_time_then_are_refused(
    mock_clock: trio.testing.MockClock,
) -> None:
    gate = KdfGate(concurrency=1, max_waiting=1, max_wait=2.0)
    blocked = Blocked()
    a: list[object] = []
    b: list[object] = []
    c: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_outcome, gate, blocked, "right", a)
        await trio.testing.wait_all_tasks_blocked()
        assert gate.running == 1
        nursery.start_soon(_outcome, gate, lambda p: True, "x", b)
        await trio.testing.wait_all_tasks_blocked()
        assert gate.waiting == 1
        # the queue is full: refused at once, no thread, no wait
        await _outcome(gate, lambda p: True, "x", c)
        assert c == [("too many logins waiting for a password check", 0.0)]
        mock_clock.jump(1.999)
        await trio.testing.wait_all_tasks_blocked()
        assert b == []
        mock_clock.jump(0.002)
        await trio.testing.wait_all_tasks_blocked()
        assert b == [("no password check slot within 2s", 2.001)]
        assert (gate.waiting, gate.refused) == (0, 2)
        blocked.release.set()
    assert a == [True]
    assert gate.running == 0


async def test_a_waiting_login_gets_the_slot_when_one_frees() -> None:
    # mock_clock is not used: trio's real clock, and max_wait is far beyond the test's timeout
    gate = KdfGate(concurrency=2, max_waiting=4, max_wait=3600.0)
    blocked = [Blocked(), Blocked()]
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        for check in blocked:
            nursery.start_soon(_outcome, gate, check, "right", results)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_outcome, gate, lambda p: p == "right", "wrong", results)
        await trio.testing.wait_all_tasks_blocked()
        assert (gate.running, gate.waiting) == (2, 1)
        blocked[0].release.set()
        with trio.fail_after(10):
            while len(results) < 2:
                await trio.sleep(0.001)
        assert sorted(map(str, results)) == ["False", "True"]
        blocked[1].release.set()
    assert gate.refused == 0


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    gate = KdfGate(concurrency=1, max_waiting=1, max_wait=3600.0)
    blocked = Blocked()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_outcome, gate, blocked, "right", [])
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            await gate.run(lambda p: True, "x")
        assert (gate.waiting, gate.running, gate.refused) == (0, 1, 0)
        blocked.release.set()
    assert await gate.run(lambda p: p == "y", "y") is True


async def test_authenticate_cold_then_cached_then_wrong() -> None:
    auth, gate = _auth(), KdfGate()
    cold = await authenticate(auth, gate, source="10.0.0.1", extension="100", password="right")
    assert cold == AuthResult(AuthOutcome.ACCEPTED, "100")
    warm = await authenticate(auth, gate, source="10.0.0.1", extension="100", password="right")
    assert warm == AuthResult(AuthOutcome.ACCEPTED, "100", cached=True)
    wrong = await authenticate(auth, gate, source="10.0.0.1", extension="100", password="bad")
    assert wrong == AuthResult(AuthOutcome.REJECTED, "100")
    unknown = await authenticate(auth, gate, source="10.0.0.1", extension="999", password="right")
    assert unknown == AuthResult(AuthOutcome.REJECTED, "999")


async def test_a_flood_gets_503_while_cached_callers_still_get_in() -> None:
    auth = _auth()
    gate = KdfGate(concurrency=1, max_waiting=0, max_wait=1.0)
    assert (await authenticate(auth, gate, source="a", extension="100", password="right")).allowed
    blocked = Blocked()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_outcome, gate, blocked, "right", [])  # the budget is spent
        await trio.testing.wait_all_tasks_blocked()
        flood = [
            await authenticate(auth, gate, source=f"10.9.0.{i}", extension="101", password=f"guess{i}")
            for i in range(20)
        ]
        assert {r.outcome for r in flood} == {AuthOutcome.BUSY}
        assert {r.mccp_code for r in flood} == {503}
        warm = await authenticate(auth, gate, source="a", extension="100", password="right")
        assert warm == AuthResult(AuthOutcome.ACCEPTED, "100", cached=True)
        blocked.release.set()
    # refusals for lack of budget are not failures: nobody is throttled or locked out
    assert not auth.is_locked(extension="101", now=trio.current_time())
    assert (await authenticate(auth, gate, source="b", extension="101", password="other")).delay == 0.0
    assert gate.refused == 20


@pytest.mark.parametrize(("args"), [{"concurrency": 0}, {"max_waiting": -1}, {"max_wait": -1.0}])
def test_gate_validation(args: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="concurrency >= 1"):
        KdfGate(**args)  # type: ignore[arg-type]
