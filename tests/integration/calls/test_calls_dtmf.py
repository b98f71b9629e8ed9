"""DTMF from the page's MCCP `dtmf` message: SIP INFO (application/dtmf-relay) in dtmf_mode "info",
and nothing in SIP in the default mode "rfc4733" (there the page's RTCDTMFSender events travel in the
media, which tests/e2e/test_call_baresip.py checks against baresip). SIPp is the phone."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.calls.conftest import PASSWORD, Leaks, call_bridge, page, sipp, sipp_exit

import trio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]


async def test_dtmf_as_sip_info(tmp_path: Path) -> None:
    with trio.fail_after(25):
        async with call_bridge(tmp_path, dtmf_mode="info") as bridge, sipp(tmp_path, "uas_dtmf_info") as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.send_raw('{"type": "dtmf", "digits": "5#"}')
                await trio.sleep(0.5)
                await p.hangup()
                hangup = await p.wait_hangup()
                assert hangup.code == 200
            assert await sipp_exit(uas) == 0, uas.errors()
            messages = uas.messages()
            assert messages.count("INFO sip:") == 2
            assert "Signal=5" in messages
            assert "Signal=#" in messages
            await leaks.check()


async def test_dtmf_message_sends_no_info_in_rfc4733_mode(tmp_path: Path) -> None:
    with trio.fail_after(25):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo") as uas:
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.send_raw('{"type": "dtmf", "digits": "5"}')
                await trio.sleep(0.5)
                await p.hangup()
                await p.wait_hangup()
            assert await sipp_exit(uas) == 0, uas.errors()  # an INFO would have failed the scenario
            assert "INFO sip:" not in uas.messages()
