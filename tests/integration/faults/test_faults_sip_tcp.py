"""SIP TCP connections held open by one address (docs/security.md 6b), against the whole bridge,
in-process, with the transport's default caps (64 connections per source IP, 512 in all, a message
due within 30 s of its first byte, an accepted connection's first message within 30 s).

250 connections from one address: 200 send nothing and 50 trickle a head that never ends. The
bridge keeps at most 64 of them; a phone at another address registers over TCP meanwhile; every
kept one is closed once the head deadline passes although the trickle goes on; every descriptor
is back when the attackers leave. Run inside scripts/netns_run.sh."""

from __future__ import annotations

import inspect
import logging
import os
import re
import secrets
from pathlib import Path

import pytest
from tests.e2e.conftest import running_bridge

import trio
from sip.auth import DigestClient, challenges
from sip.message import Response
from sip.parser import StreamParser
from sip.transport import SipTransport

pytestmark = pytest.mark.timeout(150)

ATTACKER = "127.0.0.50"
PHONE = "127.0.0.51"
PASSWORD = "faults-secret-101"
_DEFAULTS = inspect.signature(SipTransport).parameters
PER_ADDRESS: int = _DEFAULTS["max_tcp_per_address"].default
HEAD_TIMEOUT: float = _DEFAULTS["tcp_head_timeout"].default


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def tcp_from(source: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


def register(n: int, local_port: int, authorization: str | None = None) -> bytes:
    lines = [
        "REGISTER sip:127.0.0.1 SIP/2.0",
        f"Via: SIP/2.0/TCP {PHONE}:{local_port};branch=z9hG4bK{secrets.token_hex(6)};rport",
        "Max-Forwards: 70",
        "From: <sip:101@127.0.0.1>;tag=ph1",
        "To: <sip:101@127.0.0.1>",
        "Call-ID: faults-register-101",
        f"CSeq: {n} REGISTER",
        f"Contact: <sip:101@{PHONE}:{local_port};transport=tcp>",
        "Expires: 60",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


async def next_response(stream: trio.SocketStream, parser: StreamParser) -> Response:
    with trio.fail_after(10):
        while True:
            for event in parser.events():
                if isinstance(event, Response):
                    return event
            parser.feed(await stream.receive_some(65536))


async def register_over_tcp(port: int) -> int:
    """A phone's REGISTER over TCP with its digest answer: the final status."""
    async with await tcp_from(PHONE, port) as stream:
        local_port = stream.socket.getsockname()[1]
        parser = StreamParser()
        await stream.send_all(register(1, local_port))
        challenge = challenges(await next_response(stream, parser))[0]
        creds = DigestClient("101", PASSWORD).authorize(challenge, "REGISTER", "sip:127.0.0.1", "c1")
        await stream.send_all(register(2, local_port, str(creds)))
        return (await next_response(stream, parser)).status


async def test_one_address_cannot_hold_the_sip_tcp_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    silent, trickling = 200, 50
    with trio.fail_after(120):
        async with running_bridge(tmp_path, {"100": "faults-secret-100", "101": PASSWORD}) as bridge:
            found = re.search(r"SIP on 127\.0\.0\.1:(\d+) ", caplog.text)
            assert found, caplog.text
            port = int(found[1])
            assert await register_over_tcp(port) == 200  # warm-up: what the first REGISTER loads
            await trio.sleep(0.2)
            baseline = open_fds()
            streams = [await tcp_from(ATTACKER, port) for _ in range(silent + trickling)]
            refused = 0
            async with trio.open_nursery() as nursery:
                endless = b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nX-Pad: " + b"a" * 10_000

                async def trickle(stream: trio.SocketStream) -> None:
                    nonlocal refused
                    try:
                        for byte in endless:
                            await stream.send_all(bytes([byte]))
                            await trio.sleep(0.2)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        refused += 1

                for stream in streams[silent:]:
                    nursery.start_soon(trickle, stream)
                await trio.sleep(1.0)
                held = open_fds() - baseline - len(streams)  # the bridge's side only
                phone = await register_over_tcp(port)
                # Past the head deadline the kept ones are closed although the trickle goes on.
                cut = held
                with trio.move_on_after(HEAD_TIMEOUT + 15):
                    while (cut := open_fds() - baseline - len(streams)) > 0:
                        await trio.sleep(0.2)
                print(
                    f"SIP TCP: {silent} silent + {trickling} trickling connections from one address: the "
                    f"bridge holds {held} fds (cap {PER_ADDRESS}; was {silent + trickling}), a phone "
                    f"elsewhere registers ({phone}); {cut} held {HEAD_TIMEOUT:g}+ s later; "
                    f"{refused} of the {trickling} trickles were cut"
                )
                nursery.cancel_scope.cancel()
            for stream in streams:
                await trio.aclose_forcefully(stream)
            assert held <= PER_ADDRESS
            assert phone == 200
            assert cut <= 0
            caps = [r for r in caplog.records if "SIP TCP connections from 127.0.0.50" in r.getMessage()]
            assert len(caps) == 1  # the cap is logged once, then only counted
            with trio.move_on_after(5):
                while open_fds() > baseline:
                    await trio.sleep(0.05)
            assert open_fds() <= baseline
            assert bridge.active_calls == 0
