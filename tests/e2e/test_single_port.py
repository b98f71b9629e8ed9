"""The single-port mode end to end: headless Chromium and Firefox call the echo extension through a bridge
whose browser legs all use one UDP port (`rtp_browser_port`, rtp.browser_port).

The whole product runs in this process (`bridge.app.run_bridge` with the real services) as in
test_call_echo; the page's ICE pair must end on the shared port (the answer's candidate and the
nominated pair's remote side), its own audio (a 440 Hz WAV) must come back, and the shared port
stays the bridge's after the call and is given back when the bridge stops.
Run inside scripts/netns_run.sh (the CI does).
"""

from __future__ import annotations

import platform
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.e2e.conftest import (
    INBOUND_AUDIO_JS,
    REMOTE_FREQUENCY_JS,
    assert_media_ports_free,
    launch_browser,
    running_bridge,
    wait_no_calls,
)
from tests.integration.calls.conftest import metric, scrape_metrics

import trio
from bridge.app import BridgeContext

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

PASSWORD = "e2e-secret-100"

# The browser's view of the ICE pair: the bridge's candidates in its answer, and the remote side
# of the nominated pair.
ICE_PORTS_JS = r"""
(async () => {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
  });
  const remote = pair ? stats.get(pair.remoteCandidateId) : null;
  const sdp = pc.remoteDescription ? pc.remoteDescription.sdp : "";
  const offered = [...sdp.matchAll(/a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ/gi)].map((m) => Number(m[1]));
  return { nominated: remote ? remote.port : null, offered };
})()
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def shared_port() -> int:
    return free_udp_port()


@pytest.fixture
async def bridge(
    tmp_path: Path, shared_port: int, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[BridgeContext]:
    if kernel == "old":  # no 4-tuple hash for connected UDP sockets: the port read in C, no twins
        monkeypatch.setattr(platform, "release", lambda: "6.1.0-28-amd64")
    async with running_bridge(tmp_path, {"100": PASSWORD}, rtp_browser_port=str(shared_port)) as context:
        yield context


@pytest.fixture
def kernel() -> str:
    return "this"


@pytest.mark.parametrize(
    ("browser", "kernel"), [("chromium", "this"), ("firefox", "this"), ("chromium", "old")]
)
async def test_a_browser_calls_the_echo_extension_on_one_port(
    bridge: BridgeContext, shared_port: int, tmp_path: Path, browser: str, kernel: str
) -> None:
    assert bridge.config.rtp_browser_port == shared_port
    assert not port_is_free(shared_port)  # bound by the bridge at start, before any call
    with trio.fail_after(45):
        async with launch_browser(browser, bridge, tmp_path) as page:
            host, port = bridge.wss_addresses[0]
            await page.goto(f"https://{host}:{port}/lite.html?server={host}:{port}&clr=100&pwd={PASSWORD}")
            await page.wait_for("document.getElementById('cld') !== null", timeout=10)
            await page.evaluate("(document.getElementById('cld').value = '600', 1)")
            await page.evaluate("(document.getElementById('form').requestSubmit(), 1)")
            await page.wait_for("['talking', 'ended'].includes(window.__mccp.state)", timeout=15)
            assert await page.evaluate("window.__mccp.state") == "talking", await page.evaluate(
                "[window.__mccp.states, window.__mccp.endText]"
            )
            await page.wait_for("(await window.__mccp.getStats()).inbound?.packets > 50", timeout=10)
            ice = await page.evaluate(ICE_PORTS_JS)
            assert ice["offered"], ice
            assert set(ice["offered"]) == {shared_port}, ice
            assert ice["nominated"] == shared_port, ice
            inbound = await page.evaluate(INBOUND_AUDIO_JS)
            assert inbound["level"] > 0.01, inbound  # decoded audio, not silence
            if browser == "chromium":  # headless Firefox has no audio output, so WebAudio cannot run there
                heard = await page.evaluate(REMOTE_FREQUENCY_JS)
                assert abs(heard["freq"] - 440.0) < 0.05 * 440.0, heard
            assert bridge.active_calls == 1
            await page.evaluate("(document.getElementById('hangup').click(), 1)")
            await page.wait_for("window.__mccp.state === 'ended'", timeout=5)
            await wait_no_calls(bridge)
    got = await scrape_metrics(bridge)  # the shared port's counters (its checks, no strangers)
    read = metric(got, "mccp_bridge_browser_port_datagrams_total")
    print(f"{browser}, {kernel} kernel: the shared port read {read:.0f} datagrams")
    if kernel == "old":  # no twins: the browser's whole stream came through the shared port, read in C
        assert read >= 30, got
    else:  # the set-up's checks and DTLS; the stream came on the call's connected twin
        assert 1 <= read < 50, got
    for cause in ("stun_no_ufrag", "unknown_ufrag", "leg_errors"):
        assert metric(got, "mccp_bridge_browser_port_dropped_total", cause=cause) == 0, cause
    assert not port_is_free(shared_port)  # the worker's port outlives the call
    assert_media_ports_free()


async def test_the_shared_port_is_given_back_when_the_bridge_stops(tmp_path: Path, shared_port: int) -> None:
    async with running_bridge(tmp_path, {"100": PASSWORD}, rtp_browser_port=str(shared_port)):
        assert not port_is_free(shared_port)
    assert port_is_free(shared_port)
