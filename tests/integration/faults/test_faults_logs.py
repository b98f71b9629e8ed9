"""The disk is full when the log is written (issue 7): `mccp-bridge serve --log-file /dev/full`, and
`serve` with stderr (its log) on /dev/full. Either way the bridge starts, serves the page, completes a
call to the echo extension with media both ways and exits 0 on SIGTERM; the log failure is reported
once on stderr (when stderr is not the log itself), with no traceback. Run inside scripts/netns_run.sh."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from tests.integration.faults.faults_support import Bridge, https_get, serve
from tests.support.synthetic_browser import open_synthetic_browser

import trio

pytestmark = pytest.mark.timeout(120)

MEDIA = ("--rtp-ports", "33010-33019", "--shutdown-grace", "2")


async def page_and_echo_call(bridge: Bridge) -> None:
    """The page is served, and a call to the echo extension hears its own packets back."""
    page = await https_get(bridge.port, "/lite.html")
    assert page.startswith(b"HTTP/1.1 200"), page[:100]
    async with open_synthetic_browser(("127.0.0.1", bridge.port)) as browser:
        await browser.call("100", bridge.password, "600")
        await browser.wait_for("answer", timeout=15)
        await browser.wait_media(to_receive=25, to_send=25)
        await browser.hangup()
        hangup = await browser.wait_hangup()
        assert hangup.code == 200, hangup


async def stop(bridge: Bridge) -> None:
    bridge.process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        status = await bridge.process.wait()
    assert status == 0, bridge.err[-20:]


async def test_log_file_on_a_full_disk(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with serve(tmp_path, "--log-file", "/dev/full", *MEDIA) as bridge:
            await bridge.wait_for("cannot write the log to /dev/full", bridge.err)
            await page_and_echo_call(bridge)
            await stop(bridge)
    print("stderr:", bridge.err)
    assert len(bridge.err) == 1, bridge.err
    assert "No space left on device" in bridge.err[0]


async def test_stderr_on_a_full_disk(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with serve(tmp_path, *MEDIA, stderr_file=Path("/dev/full")) as bridge:
            await page_and_echo_call(bridge)
            await stop(bridge)
