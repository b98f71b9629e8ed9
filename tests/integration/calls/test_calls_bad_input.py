"""Bad input during a call is answered or dropped and counted; the call goes on and ends normally:
malformed and out-of-state MCCP from the page, and datagrams from strangers (garbage, forged
STUN, fake SRTP) on the call's browser port. Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

import os
import struct
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

import trio
from mccp.messages import ErrorReply

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]


async def test_bad_input_during_a_call_is_survived(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo") as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.wait_media(to_receive=10)
                # MCCP: not JSON, an unknown type, a second call
                await p.send_raw("{not json")
                await p.send_raw('{"type":"hello"}')
                await p.send_raw('{"type":"call","clr":"100","pwd":"x","cld":"102","sdp":"v=0"}')
                await p.wait_until(lambda: sum(isinstance(m, ErrorReply) for m in p.messages) == 3)
                codes = [m.code for m in p.messages if isinstance(m, ErrorReply)]
                assert codes == [400, 400, 409]
                # strangers on the browser port: garbage, a STUN check with a wrong password, fake SRTP
                assert p.remote is not None
                with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as stranger:
                    await stranger.bind(("127.0.0.1", 0))
                    fake_srtp = struct.pack("!BBHII", 0x80, 0, 1, 160, 0x1234) + os.urandom(170)
                    stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
                    for datagram in (os.urandom(200), b"", stun, fake_srtp, b"\x16\xfe\xfd" + os.urandom(50)):
                        await stranger.sendto(datagram, p.remote.candidate)
                received = p.received.packets
                await p.wait_media(to_receive=received + 25)  # media still flows both ways
                assert p.hangup_message is None
                await p.hangup()
                assert (await p.wait_hangup()).code == 200
            assert await sipp_exit(uas) == 0, uas.errors()
            samples = await scrape_metrics(bridge)
            # the fake SRTP and DTLS came from an address that passed no ICE check
            assert (
                metric(
                    samples, "mccp_bridge_packets_dropped_total", direction="to_sip", cause="not_validated"
                )
                >= 2
            )
            assert metric(samples, "mccp_bridge_calls_ended_total", by="page", code="200") == 1
            await leaks.check()
