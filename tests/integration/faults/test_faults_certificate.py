"""A certificate replaced under a live call (issue 7): the real `mccp-bridge serve`, a call to the echo
extension with media both ways, then server.crt/server.key replaced by a new pair and SIGHUP. The
call keeps its media (packets counted before and after, none lost), new TLS connections get the new
certificate (its SHA-256 as logged), a new call works (its DTLS identity is the process's own,
`DtlsCertificate.generate()`, independent of the WSS pair: the reload does not touch it). Then a bad
pair (a key that does not match) and SIGHUP: one error line, the previous pair stays in use, the
call still flows. Run inside scripts/netns_run.sh."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import signal
from pathlib import Path

import pytest
from tests.integration.faults.faults_support import Bridge, serve, server_certificate
from tests.support.synthetic_browser import SyntheticBrowser, open_synthetic_browser

import trio
from bridge.certs import generate_self_signed

pytestmark = pytest.mark.timeout(150)


def colon_hex(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


async def packets_over(browser: SyntheticBrowser, seconds: float) -> int:
    before = browser.received.packets
    await trio.sleep(seconds)
    return browser.received.packets - before


async def reload(bridge: Bridge, pattern: str) -> str:
    """SIGHUP, then the first new stderr line matching `pattern`."""
    start = len(bridge.err)
    bridge.process.send_signal(signal.SIGHUP)
    with trio.fail_after(10):
        while True:
            for line in bridge.err[start:]:
                if pattern in line:
                    return line
            await bridge.changed.wait()


async def test_certificate_replaced_under_a_call(tmp_path: Path) -> None:
    flags = ("--rtp-ports", "33020-33029", "--shutdown-grace", "2")
    with trio.fail_after(120):
        async with serve(tmp_path, *flags) as bridge:
            cert_file, key_file = bridge.certificate_files()
            old = await server_certificate(bridge.port)
            async with open_synthetic_browser(("127.0.0.1", bridge.port)) as browser:
                await browser.call("100", bridge.password, "600")
                await browser.wait_for("answer", timeout=15)
                await browser.wait_media(to_receive=25)
                steady = await packets_over(browser, 1.0)

                # A good new pair, written over the old files, then SIGHUP.
                new = generate_self_signed(tmp_path / "new", ["127.0.0.1"], now=dt.datetime.now(dt.UTC))
                shutil.copyfile(new.cert_file, cert_file)
                shutil.copyfile(new.key_file, key_file)
                lost_before = browser.received.lost
                sent_before, received_before = browser.sent_packets, browser.received.packets
                line = await reload(bridge, "reload: certificate")
                assert f"SHA-256 {new.fingerprint}" in line, line
                after_reload = await packets_over(browser, 1.0)
                served = await server_certificate(bridge.port)
                assert served != old
                assert colon_hex(served) == new.fingerprint
                assert browser.hangup_message is None

                # A new call while the first one is up: WSS on the new pair, DTLS as before.
                async with open_synthetic_browser(("127.0.0.1", bridge.port)) as second:
                    await second.call("100", bridge.password, "600")
                    await second.wait_for("answer", timeout=15)
                    await second.wait_media(to_receive=25)
                    await second.hangup()
                    assert (await second.wait_hangup()).code == 200

                # A bad pair: the key of another certificate. One error line, the good pair stays.
                other = generate_self_signed(tmp_path / "other", ["127.0.0.1"], now=dt.datetime.now(dt.UTC))
                shutil.copyfile(other.key_file, key_file)
                errors_before = sum(" ERROR " in line for line in bridge.err)
                line = await reload(bridge, "reload: certificate not reloaded")
                assert "does not match" in line, line
                after_bad = await packets_over(browser, 1.0)
                assert colon_hex(await server_certificate(bridge.port)) == new.fingerprint
                assert sum(" ERROR " in line for line in bridge.err) == errors_before + 1

                sent = browser.sent_packets - sent_before
                received = browser.received.packets - received_before
                print(
                    f"echo call, packets received in 1 s: {steady} before, {after_reload} after the reload, "
                    f"{after_bad} after the refused pair; from the reload on: {received} received for "
                    f"{sent} sent, {browser.received.lost - lost_before} lost"
                )
                assert after_reload > 0  # the media kept flowing through both reloads
                assert after_bad > 0
                assert browser.received.lost == lost_before  # and nothing was dropped
                assert browser.hangup_message is None
                await browser.hangup()
                assert (await browser.wait_hangup()).code == 200
            bridge.process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await bridge.process.wait() == 0
            assert not [line for line in bridge.err if "Traceback" in line], "\n".join(bridge.err)
