"""Upstream mode through a real Kamailio (registrar + proxy with digest auth, users 100/101/102):
a wrong password is refused by Kamailio's challenge (407 again -> the page gets 403, and the refusal
counts for the caller's throttle and in /metrics); the right one reaches SIPp registered as 102
behind Kamailio and the call is answered and hung up through its Record-Route.
Run inside scripts/netns_run.sh (Kamailio 5070, SIPp 5090).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.calls.conftest import Leaks, call_bridge, metric, page, scrape_metrics, sipp, sipp_exit
from tests.support.sip_peers import KAMAILIO_PORT, KAMAILIO_USERS, SIPP_PORT, Kamailio

import trio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]


async def test_kamailio_refuses_a_wrong_password_and_passes_the_right_one(tmp_path: Path) -> None:
    kamailio = Kamailio(tmp_path / "kamailio")
    await trio.to_thread.run_sync(kamailio.start)
    try:
        await trio.to_thread.run_sync(kamailio.register_contact, "102", f"sip:102@127.0.0.1:{SIPP_PORT}")
        upstream = f"sip:127.0.0.1:{KAMAILIO_PORT}"
        with trio.fail_after(30):
            async with call_bridge(tmp_path, upstream=upstream) as bridge, sipp(tmp_path, "uas_echo") as uas:
                leaks = Leaks.snapshot(bridge)
                async with page(bridge) as p:
                    await p.call("100", "wrong-password", "102")
                    hangup = await p.wait_hangup()
                    assert hangup.code == 403, hangup
                    assert "answer" not in p.kinds
                samples = await scrape_metrics(bridge)
                assert metric(samples, "mccp_bridge_auth_failures_total", reason="upstream") == 1
                assert "INVITE" not in uas.messages()  # Kamailio never let it through
                await leaks.check()
                async with page(bridge) as p:
                    await p.call("100", KAMAILIO_USERS["100"], "102")
                    await p.wait_for("answer")
                    await p.wait_media(to_receive=20)
                    assert abs(p.heard()[0] - 440) < 10
                    await p.hangup()
                    assert (await p.wait_hangup()).code == 200
                assert await sipp_exit(uas) == 0, uas.errors()
                trace = uas.messages()
                assert "Record-Route: <sip:127.0.0.1:5070;lr" in trace
                assert "BYE sip:" in trace
                await leaks.check()
    finally:
        await trio.to_thread.run_sync(kamailio.stop)
