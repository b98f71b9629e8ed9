"""Calls coming and going during a measured step (`bench.relay --churn CPS`).

A real bridge sets calls up and tears them down while others talk: the set-up work (TLS, MCCP, the
password check, SIP, ICE, the DTLS handshake, SRTP keys, the collector's pauses over the objects a
set-up leaves) shares the worker with the established calls' media. The established calls' loss
and latency in a step with churn, against the same step without, is what it costs them.

* Bridge: every `1 / cps` seconds a new call through the real signalling (`bench.calls.bridge_call`,
  a repeat caller: the credentials cache, no scrypt), on a browser socket of its own (the step's
  blaster owns the main one), held `hold` seconds, then hung up (MCCP `hangup` -> SIP BYE). No
  media on the churned calls: their cost is the set-up and the teardown.
* rtpengine: the same rhythm of ng `offer` + `answer`, held, then `delete`.

Each returns a summary: calls offered, set up, failed (with the first errors), set-up time p50/p99
(MCCP `call` -> answered and DTLS connected; for rtpengine the ng round trips), and how many were
torn down cleanly before the churn ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from bench.browser_leg import BrowserSocket
from bench.calls import SetupRecord, bridge_call, rtpengine_calls
from bench.phone_leg import Phone

TEARDOWN_LIMIT = 10.0  # seconds the last calls get to end after the churn stops starting new ones


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))], 3)


def summary(records: list[SetupRecord], ended: int, cps: float, hold: float) -> dict[str, Any]:
    totals = [r.total_ms for r in records if r.ok and r.total_ms is not None]
    return {
        "cps": cps,
        "hold_s": hold,
        "offered": len(records),
        "set_up": sum(1 for r in records if r.ok),
        "failed": sum(1 for r in records if not r.ok),
        "errors": sorted({r.error for r in records if not r.ok})[:5],
        "ended": ended,
        "total_ms": {"p50": percentile(totals, 0.5), "p99": percentile(totals, 0.99)},
    }


async def _paced(cps: float, seconds: float, one: Callable[[int], Awaitable[None]]) -> None:
    """Start `one(k)` every 1 / cps seconds for `seconds`; return once all have returned."""
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        k = 0
        while k / cps < seconds:
            await trio.sleep_until(t0 + k / cps)
            nursery.start_soon(one, k)
            k += 1


async def bridge_churn(
    wss_port: int, bsock: BrowserSocket, phone: Phone, *, cps: float, seconds: float, hold: float, first: int
) -> dict[str, Any]:
    """Churn bridge calls numbered from `first` (their WebSockets' source addresses follow the number)."""
    records: list[SetupRecord] = []
    ended = 0

    async def one(k: int) -> None:
        nonlocal ended
        async with trio.open_nursery() as held:
            record, call, _ = await bridge_call(held, wss_port, bsock, phone, first + k)
            records.append(record)
            if call is None:
                return
            await trio.sleep(hold)
            call.hangup.set()
            with trio.move_on_after(TEARDOWN_LIMIT):
                await call.ended.wait()
                ended += not call.dropped
            held.cancel_scope.cancel()

    await _paced(cps, seconds, one)
    return summary(records, ended, cps, hold)


async def rtpengine_churn(
    ng_port: int, browser_port: int, phone_port: int, *, cps: float, seconds: float, hold: float
) -> dict[str, Any]:
    records: list[SetupRecord] = []
    ended = 0

    async def one(k: int) -> None:
        nonlocal ended
        async with rtpengine_calls(ng_port, browser_port, phone_port, 1) as calls:
            records.extend(calls.records)
            if calls.failed:
                return
            await trio.sleep(hold)
        ended += 1  # `delete` sent (rtpengine_calls' exit)

    await _paced(cps, seconds, one)
    return summary(records, ended, cps, hold)
