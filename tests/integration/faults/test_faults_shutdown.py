"""Graceful stop against a peer that never answers the BYE (issue 7): the real `mccp-bridge serve`
in upstream mode towards a scripted SIP peer (a UDP socket in the test) that answers the INVITE and
then ignores everything. On SIGTERM the peer gets its BYE at once and the page its hangup (503);
the BYE is never answered, so the bridge waits out `shutdown_grace` (not Timer F, 32 s, nor the
UA's own 4 s hang-up bound on top) and exits 0.
A second SIGTERM during that wait exits at once with 128+15. Run inside scripts/netns_run.sh."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from tests.integration.faults.faults_support import Bridge, serve
from tests.support.synthetic_browser import SyntheticBrowser, open_synthetic_browser

import trio
from sip.headers import NameAddr
from sip.message import Request, make_response
from sip.parser import parse_datagram_untrusted
from sip.uri import parse_sip_uri

pytestmark = pytest.mark.timeout(120)


class SilentAfterAnswer:
    """Answers the first INVITE with 200 and an SDP, then records every request and answers none."""

    def __init__(self, sock: trio.socket.SocketType, media_port: int) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.media_port = media_port
        self.methods: list[str] = []
        self.changed = trio.Event()

    async def run(self) -> None:
        while True:
            data, addr = await self.sock.recvfrom(65535)
            message = parse_datagram_untrusted(data)
            if not isinstance(message, Request):
                continue
            self.methods.append(message.method)
            self.changed.set()
            self.changed = trio.Event()
            if message.method == "INVITE" and self.methods.count("INVITE") == 1:
                sdp = (
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                    f"m=audio {self.media_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
                ).encode()
                contact = NameAddr(parse_sip_uri(f"sip:peer@127.0.0.1:{self.port}"))
                answer = make_response(
                    message, 200, to_tag="silent", contact=contact, body=sdp, content_type="application/sdp"
                )
                await self.sock.sendto(bytes(answer), addr)

    async def wait_for(self, method: str, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while method not in self.methods:
                await self.changed.wait()


async def answered_call(bridge: Bridge, browser: SyntheticBrowser) -> None:
    await browser.call("100", bridge.password, "102")
    await browser.wait_for("answer", timeout=15)


@pytest.mark.parametrize("second_sigterm", [False, True], ids=["grace", "second-sigterm"])
async def test_sigterm_with_a_peer_that_never_answers_bye(tmp_path: Path, second_sigterm: bool) -> None:
    grace = 20 if second_sigterm else 2
    with trio.fail_after(100):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        media = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock, media:
            await sock.bind(("127.0.0.1", 0))
            await media.bind(("127.0.0.1", 0))
            peer = SilentAfterAnswer(sock, media.getsockname()[1])
            flags = ["--upstream", f"sip:127.0.0.1:{peer.port}", "--rtp-ports", "33030-33039"]
            flags += ["--shutdown-grace", str(grace)]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.run)
                async with (
                    serve(tmp_path, *flags) as bridge,
                    open_synthetic_browser(("127.0.0.1", bridge.port)) as browser,
                ):
                    await answered_call(bridge, browser)
                    await peer.wait_for("ACK")
                    bridge.process.send_signal(signal.SIGTERM)
                    stopped = trio.current_time()
                    await peer.wait_for("BYE")
                    if second_sigterm:  # while the bridge waits for the BYE's answer
                        bridge.process.send_signal(signal.SIGTERM)
                        stopped = trio.current_time()
                    else:
                        hangup = await browser.wait_hangup()
                        assert hangup.code == 503, hangup
                    with trio.fail_after(grace + 10):
                        status = await bridge.process.wait()
                    elapsed = trio.current_time() - stopped
                nursery.cancel_scope.cancel()
    print(
        f"SIGTERM ({'twice' if second_sigterm else 'once'}), grace {grace} s, BYE never answered: "
        f"exit {status} {elapsed:.2f} s after the {'second' if second_sigterm else 'first'} SIGTERM; "
        f"BYEs sent {peer.methods.count('BYE')}"
    )
    assert peer.methods.count("BYE") >= 1
    if second_sigterm:
        assert status == 128 + signal.SIGTERM
        assert elapsed < grace / 2  # at once, not at the end of the grace (20 s)
    else:
        assert status == 0, bridge.err[-20:]
        assert elapsed >= grace * 0.9  # it did wait for the BYE's answer, up to the grace...
        assert elapsed < grace + 8  # ...and not for Timer F (32 s) nor the UA's own hang-up bound
    assert not [line for line in bridge.err if "Traceback" in line], "\n".join(bridge.err[-30:])
