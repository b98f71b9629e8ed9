"""Many calls: concurrent calls each end their own way without disturbing the others, and a run of
sequential calls leaves nothing behind (fds, tasks, ports, live metrics). SIPp answers them all
(-m N, RTP echo). Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.calls.conftest import (
    PASSWORD,
    Leaks,
    call_bridge,
    metric,
    page,
    scrape_metrics,
    sipp,
    sipp_exit,
)
from tests.support.synthetic_browser import SyntheticBrowser

import trio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

CONCURRENT = 6
SEQUENTIAL = 10


async def test_concurrent_calls_end_independently(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo", calls=CONCURRENT) as uas:
            leaks = Leaks.snapshot(bridge)
            pages: list[SyntheticBrowser] = []

            async def one_call(index: int) -> None:
                async with page(bridge, tone_hz=300.0 + 100 * index) as p:
                    pages.append(p)
                    await p.call("100", PASSWORD, "102")
                    await p.wait_for("answer")
                    await p.wait_media(to_receive=50, timeout=15)
                    freq, _ = p.heard()
                    assert abs(freq - (300 + 100 * index)) < 10  # its own echo, no cross-talk
                    if index % 2:
                        await p.close_abruptly()
                    else:
                        await p.hangup()
                        assert (await p.wait_hangup()).code == 200

            async with trio.open_nursery() as nursery:
                for index in range(CONCURRENT):
                    nursery.start_soon(one_call, index)
            assert await sipp_exit(uas, timeout=15) == 0, uas.errors()
            assert uas.messages().count("BYE sip:") == CONCURRENT
            await leaks.check()
            samples = await scrape_metrics(bridge)
            assert metric(samples, "mccp_bridge_calls_ended_total", by="page", code="200") == CONCURRENT


async def test_sequential_calls_leave_nothing_behind(tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo", calls=SEQUENTIAL) as uas:
            leaks = Leaks.snapshot(bridge)
            for index in range(SEQUENTIAL):
                async with page(bridge) as p:
                    await p.call("100", PASSWORD, "102")
                    await p.wait_for("answer")
                    await p.wait_media(to_receive=5)
                    if index % 2:
                        await p.close_abruptly()
                    else:
                        await p.hangup()
                        await p.wait_hangup()
                await leaks.check()
            assert await sipp_exit(uas) == 0, uas.errors()
            samples = await scrape_metrics(bridge)
            assert metric(samples, "mccp_bridge_active_calls") == 0
            assert metric(samples, "mccp_bridge_calls_ended_total", by="page", code="200") == SEQUENTIAL
            relayed = metric(samples, "mccp_bridge_packets_relayed_total", direction="to_browser")
            assert relayed >= 5 * SEQUENTIAL
