"""Shared pieces of the hostile-client suite: a bridge with short front timeouts, attackers, gauges.

`hostile_bridge()` runs the whole bridge in-process (tests/e2e/conftest.py `running_bridge`, real
services, echo extension 600, SIP on SIP_PORT) with the `handshake_timeout` setting cut to
HEAD_TIMEOUT seconds (the default is 10 s) and the MCCP front's `ServerStats` visible to the test.
Attackers bind other loopback addresses (127.0.0.2 and up: all of 127/8 is local) so that the
per-address limits of the honest client on 127.0.0.1 stay its own.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio_websocket
from tests.e2e.conftest import running_bridge, wait_no_calls
from tests.support.synthetic_browser import open_synthetic_browser

import trio
from bridge.app import BridgeContext
from mccp.codec import decode_bridge_untrusted, encode
from mccp.messages import BridgeMessage, Call, Hangup
from mccp.server import ServerStats

HEAD_TIMEOUT = 2.0
SIP_PORT = 35060
ECHO = "600"
PASSWORD = "hostile-secret-100"
EXTENSIONS = {"100": PASSWORD, "101": "hostile-secret-101"}
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"


def open_fds() -> int:
    """Open file descriptors of this process (the bridge runs in it)."""
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> dict[int, str]:
    """What each open descriptor of this process points to."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
    return out


def rss_mib() -> float:
    """Resident set size of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@dataclass
class Gauges:
    """fds and RSS at a point in time; `report()` says what changed since."""

    fds: int
    rss: float
    targets: dict[int, str]

    @classmethod
    def now(cls) -> Gauges:
        return cls(open_fds(), rss_mib(), fd_targets())

    def report(self, what: str) -> str:
        after = Gauges.now()
        line = f"{what}: fds {self.fds} -> {after.fds}, RSS {self.rss:.1f} -> {after.rss:.1f} MiB"
        print(line)
        return line

    async def assert_back(self, *, rss_growth_mib: float = 40.0, timeout: float = 5.0) -> None:
        """fds back to the snapshot (within `timeout`) and RSS grown by less than the bound."""
        with trio.move_on_after(timeout):
            while open_fds() > self.fds:
                await trio.sleep(0.05)
        new = {fd: t for fd, t in fd_targets().items() if self.targets.get(fd) != t}
        assert open_fds() <= self.fds, f"fds {self.fds} -> {open_fds()}: {new}"
        assert rss_mib() - self.rss < rss_growth_mib, f"RSS {self.rss:.1f} -> {rss_mib():.1f} MiB"


@dataclass
class HostileBridge:
    """The running bridge, its MCCP front counters and where it listens."""

    context: BridgeContext
    stats: ServerStats
    wss: tuple[str, int]
    sip: tuple[str, int] = ("127.0.0.1", SIP_PORT)


async def honest_call(
    bridge: HostileBridge, packets: int = 25, clr: str = "100", pwd: str = PASSWORD
) -> None:
    """A real call (synthetic browser from 127.0.0.1, echo extension): answer and media both ways."""
    async with open_synthetic_browser(bridge.wss) as page:
        await page.call(clr, pwd, ECHO)
        await page.wait_for("answer", timeout=10)
        await page.wait_media(to_receive=packets, to_send=packets, timeout=10)
        await page.hangup()
        await page.wait_hangup()


@asynccontextmanager
async def hostile_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: str
) -> AsyncIterator[HostileBridge]:
    """The whole bridge on 127.0.0.1 (see the module docstring); `settings` are config flags.

    One honest call is made before the bridge is handed over, so that what the first call loads
    once (DTLS certificate, SRTP library, worker thread, buffers) is not counted as a leak.
    """
    del monkeypatch  # kept in the signature: the tests pass it
    settings = {"handshake_timeout": str(HEAD_TIMEOUT), **settings}
    async with running_bridge(tmp_path, EXTENSIONS, sip_port=str(SIP_PORT), **settings) as context:
        bridge = HostileBridge(context, context.stats.server, context.wss_addresses[0])
        await honest_call(bridge, packets=5)
        await wait_no_calls(context)
        yield bridge
        await wait_no_calls(context)


@functools.cache
def client_tls() -> ssl.SSLContext:
    """A TLS client context that accepts the bridge's self-signed certificate (one, shared: loading
    the system CA store for each of hundreds of attackers costs seconds of CPU)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def tcp_from(source: str, dest: tuple[str, int]) -> trio.SocketStream:
    """A TCP connection from the loopback address `source` (port chosen by the kernel)."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(dest)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def tls_from(source: str, dest: tuple[str, int]) -> trio.SSLStream[trio.SocketStream]:
    """TCP from `source` and a completed TLS handshake."""
    stream = trio.SSLStream(await tcp_from(source, dest), client_tls(), server_hostname=dest[0])
    try:
        await stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(stream)  # e.g. closed at accept: do not leave the socket to GC
        raise
    return stream


@asynccontextmanager
async def mccp_client(
    source: str, dest: tuple[str, int]
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """An MCCP WebSocket from `source` (trio-websocket over our own TLS stream)."""
    stream = await tls_from(source, dest)
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, dest[0], "/mccp")
            try:
                yield ws
            finally:
                with trio.move_on_after(1):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)  # also when the upgrade was refused


async def next_message(ws: trio_websocket.WebSocketConnection, timeout: float = 5.0) -> BridgeMessage:
    """The next MCCP message from the bridge."""
    with trio.fail_after(timeout):
        text = await ws.get_message()
    assert isinstance(text, str)
    return decode_bridge_untrusted(text)


async def login(source: str, dest: tuple[str, int], clr: str, pwd: str, cld: str = ECHO) -> BridgeMessage:
    """Send one `call` (a dummy offer) and return the bridge's first answer to it (scrypt under a
    login flood on a loaded machine can take seconds: the tests bound what they measure)."""
    async with mccp_client(source, dest) as ws:
        await ws.send_message(encode(Call(clr=clr, pwd=pwd, cld=cld, sdp=SDP)))
        return await next_message(ws, timeout=15.0)


def hangup_code(message: BridgeMessage) -> int | None:
    """The code of a `hangup`, None for any other message."""
    return message.code if isinstance(message, Hangup) else None
