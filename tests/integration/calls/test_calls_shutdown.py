"""The bridge stops with calls up: every call gets its SIP BYE (or CANCEL) and its MCCP hangup, and
the bridge ends within a few seconds; in-process (`BridgeContext.stop()`) and as the real
`mccp-bridge serve` process on SIGTERM (exit status 0). Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from tests.integration.calls.conftest import (
    MEDIA_HIGH,
    MEDIA_LOW,
    PASSWORD,
    UPSTREAM,
    call_bridge,
    page,
    sipp,
    sipp_exit,
)
from tests.integration.test_cli_serve import serving
from tests.support.synthetic_browser import open_synthetic_browser

import trio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]


@pytest.mark.parametrize("answered", [False, True], ids=["ringing", "answered"])
async def test_bridge_stop_ends_calls(tmp_path: Path, answered: bool) -> None:
    """Two calls up (ringing, or answered with media): both get CANCEL/BYE and hangup 503."""
    scenario = "uas_echo" if answered else "uas_ring_cancel"
    with trio.fail_after(20):
        async with sipp(tmp_path, scenario, calls=2) as uas:
            async with call_bridge(tmp_path) as bridge, page(bridge) as p1, page(bridge) as p2:
                for p in (p1, p2):
                    await p.call("100", PASSWORD, "102")
                    await p.wait_for("answer" if answered else "ringing")
                for p in (p1, p2):
                    await p.wait_media(to_receive=5 if answered else 0)
                assert bridge.active_calls == 2
                bridge.stop()
                stopped = trio.current_time()
                for p in (p1, p2):
                    hangup = await p.wait_hangup()
                    assert (hangup.code, hangup.reason) == (503, "bridge is shutting down")
                    await p.wait_until(p.ws_closed.is_set)
            # leaving call_bridge waited for run_bridge to return
            assert trio.current_time() - stopped < 3
            assert bridge.active_calls == 0
            assert await sipp_exit(uas) == 0, uas.errors()
            trace = uas.messages()
            assert trace.count("BYE sip:" if answered else "CANCEL sip:") == 2


async def test_sigterm_on_serve_with_a_call_up(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    flags = ["--upstream", UPSTREAM, "--rtp-ports", f"{MEDIA_LOW}-{MEDIA_HIGH}", "--shutdown-grace", "3"]
    with trio.fail_after(40):
        async with sipp(tmp_path, "uas_echo") as uas, serving(tmp_path, data_dir, *flags) as bridge:
            async with open_synthetic_browser(("127.0.0.1", bridge.port)) as p:
                await p.call("100", "anything", "102")  # upstream mode: SIPp does not challenge
                await p.wait_for("answer", timeout=15)
                await p.wait_media(to_receive=5)
                bridge.process.send_signal(signal.SIGTERM)
                stopped = trio.current_time()
                hangup = await p.wait_hangup()
                assert hangup.code == 503, hangup
                with trio.fail_after(5):
                    status = await bridge.process.wait()
                assert status == 0, "\n".join(bridge.log[-20:])
                assert trio.current_time() - stopped < 5
            assert await sipp_exit(uas) == 0, uas.errors()
            assert "BYE sip:" in uas.messages()
            assert any("call end:" in line and "code=503" in line for line in bridge.log), bridge.log[-20:]
