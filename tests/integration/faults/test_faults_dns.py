"""DNS fails (issue 7): the real `mccp-bridge serve` with an upstream known only by a host name that
cannot be resolved (in the loopback-only namespace resolv.conf points at a name server that cannot be
reached, and `.invalid` never exists, RFC 6761 §6.4). The bridge starts; each call ends with 503 and
one log line naming the host and why; the next call looks the name up again; no traceback; SIGTERM
still exits 0. Run inside scripts/netns_run.sh."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from tests.integration.test_cli_serve import serving
from tests.support.synthetic_browser import open_synthetic_browser

import trio

pytestmark = pytest.mark.timeout(120)

HOST = "pbx.invalid"


async def test_unresolvable_upstream_503_per_call_logged_once_each_retried(tmp_path: Path) -> None:
    flags = ["--upstream", f"sip:{HOST}:5060", "--rtp-ports", "33000-33009", "--shutdown-grace", "2"]
    with trio.fail_after(90):
        async with serving(tmp_path, tmp_path / "data", *flags) as bridge:
            for attempt in (1, 2):
                async with open_synthetic_browser(("127.0.0.1", bridge.port)) as page:
                    await page.call("100", "anything", "102")
                    hangup = await page.wait_hangup(timeout=15)
                    assert hangup.code == 503, hangup
                    assert f"DNS lookup of {HOST} failed" in hangup.reason, hangup  # the page is told why
                await bridge.wait_for(r"call end:.*code=503")
                failures = [
                    line
                    for line in bridge.log
                    if f"DNS lookup of {HOST} failed" in line and "call end:" not in line
                ]
                assert len(failures) == attempt, bridge.log[
                    -10:
                ]  # one line per failed lookup (+ the end record)
            bridge.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                status = await bridge.process.wait()
            assert status == 0, "\n".join(bridge.log[-20:])
            assert not [line for line in bridge.log if "Traceback" in line], "\n".join(bridge.log)
            print(failures[-1])
