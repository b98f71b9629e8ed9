"""Calls refused before any SIP is sent: wrong password (403), no media port left (503), an
unknown number (404) and an extension that is not registered (480). The page gets the code; the
phone (SIPp, reachable through the embedded registrar) sees no INVITE; the bridge's own SIP
counters (/metrics) show nothing sent. Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from tests.integration.calls.conftest import (
    EXTENSIONS,
    MEDIA_HIGH,
    MEDIA_LOW,
    PASSWORD,
    Leaks,
    call_bridge,
    metric,
    page,
    register_from,
    scrape_metrics,
    sipp,
    sipp_exit,
)
from tests.support.sip_peers import SIPP_PORT

import trio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

PHONE_PASSWORD = "calls-phone-102"
LOCAL = {**EXTENSIONS, "102": PHONE_PASSWORD}


async def register_sipp_as_102(bridge_sip_port: int) -> None:
    contact = f"sip:102@127.0.0.1:{SIPP_PORT}"
    code = await trio.to_thread.run_sync(
        register_from, SIPP_PORT, ("127.0.0.1", bridge_sip_port), "102", PHONE_PASSWORD, contact
    )
    assert code == 200


def sip_port(bridge_log: pytest.LogCaptureFixture) -> int:
    for record in bridge_log.records:
        if record.name == "sip.transport" and "SIP transport on" in record.getMessage():
            return int(record.getMessage().split(" port ")[1].split()[0])
    raise AssertionError("the bridge did not log its SIP port")


async def test_wrong_password_403_and_no_invite(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    with trio.fail_after(20):
        async with call_bridge(tmp_path, extensions=LOCAL, upstream="") as bridge:
            await register_sipp_as_102(sip_port(caplog))
            async with sipp(tmp_path, "uas_echo") as uas:
                leaks = Leaks.snapshot(bridge)
                before = await scrape_metrics(bridge)
                async with page(bridge) as p:
                    await p.call("100", "not-the-password", "102")
                    hangup = await p.wait_hangup()
                    assert (hangup.code, hangup.reason) == (403, "Forbidden")
                    assert p.kinds == ["hangup"]
                after = await scrape_metrics(bridge)
                assert metric(after, "mccp_bridge_auth_failures_total", reason="credentials") == 1
                sent = "mccp_bridge_sip_messages_total"
                assert metric(after, sent, direction="sent") == metric(before, sent, direction="sent")
                await leaks.check()
                assert "INVITE" not in uas.messages()
                # the same call with the right password does reach SIPp: the route was live
                async with page(bridge) as p:
                    await p.call("100", PASSWORD, "102")
                    await p.wait_for("answer")
                    await p.hangup()
                    assert (await p.wait_hangup()).code == 200
                assert await sipp_exit(uas) == 0, uas.errors()
                assert "INVITE sip:102@127.0.0.1" in uas.messages()


@pytest.mark.parametrize(
    ("callee", "code", "reason"), [("999", 404, "Not Found"), ("101", 480, "Temporarily Unavailable")]
)
async def test_unknown_or_unregistered_number_no_sip(
    tmp_path: Path, callee: str, code: int, reason: str
) -> None:
    with trio.fail_after(20):
        async with call_bridge(tmp_path, upstream="") as bridge:
            leaks = Leaks.snapshot(bridge)
            before = await scrape_metrics(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, callee)
                hangup = await p.wait_hangup()
                assert (hangup.code, hangup.reason) == (code, reason)
                assert p.kinds == ["hangup"]  # no trying/progress: nothing was set up
            after = await scrape_metrics(bridge)
            sent = "mccp_bridge_sip_messages_total"
            assert metric(after, sent, direction="sent") == metric(before, sent, direction="sent") == 0
            assert metric(after, "mccp_bridge_calls_ended_total", by="bridge", code=str(code)) == 1
            await leaks.check()


async def test_media_ports_exhausted_503(tmp_path: Path) -> None:
    """Every port of the media range is taken (by this test): 503, and SIPp gets no INVITE."""
    held = []
    try:
        for port in range(MEDIA_LOW, MEDIA_HIGH + 1):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(sock)
            sock.bind(("127.0.0.1", port))
        with trio.fail_after(20):
            async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo") as uas:
                async with page(bridge) as p:
                    await p.call("100", PASSWORD, "102")
                    hangup = await p.wait_hangup()
                    assert hangup.code == 503, hangup
                    assert "no media ports" in hangup.reason
                assert "INVITE" not in uas.messages()
    finally:
        for sock in held:
            sock.close()
