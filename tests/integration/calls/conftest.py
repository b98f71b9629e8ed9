"""The call-ending tests' harness: the whole bridge in-process, SIPp as the phone, leak checks.

`call_bridge(tmp_path, ...)` runs `bridge.app.run_bridge` with the real services on 127.0.0.1
(WSS and SIP on port 0, media ports MEDIA_LOW-MEDIA_HIGH), by default in upstream mode towards
SIPp on 127.0.0.1:5090 so that every call reaches the scripted phone. `sipp(...)` starts one
SIPp UAS scenario (tests/support/sip/ or this directory). `Leaks` snapshots what a call could
leave behind (active calls, fds, Trio tasks, media ports) and asserts it all came back.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.conftest import running_bridge
from tests.support.sip_peers import SIPP_PORT, SippUas
from tests.support.synthetic_browser import SyntheticBrowser, open_synthetic_browser

import trio
from bridge.app import BridgeContext, Services
from bridge.services import bridge_services

HERE = Path(__file__).resolve().parent
MEDIA_LOW, MEDIA_HIGH = 32000, 32059
PASSWORD = "calls-secret-100"
EXTENSIONS = {"100": PASSWORD, "101": "calls-phone-101"}
UPSTREAM = f"sip:127.0.0.1:{SIPP_PORT}"


def open_fds() -> int:
    """The process's open file descriptors."""
    return len(os.listdir("/proc/self/fd"))


def count_tasks() -> int:
    """Every Trio task alive in this run."""
    stack = [trio.lowlevel.current_root_task()]
    n = 0
    while stack:
        task = stack.pop()
        n += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return n


def media_ports_free(low: int = MEDIA_LOW, high: int = MEDIA_HIGH) -> list[int]:
    """The ports of the media range that cannot be bound again (should be none)."""
    busy = []
    for port in range(low, high + 1):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


@dataclass
class Leaks:
    """What the bridge holds before a call; `check()` waits until it is back to that."""

    bridge: BridgeContext
    fds: int
    tasks: int

    @classmethod
    def snapshot(cls, bridge: BridgeContext) -> Leaks:
        return cls(bridge, open_fds(), count_tasks())

    async def check(self, *, timeout: float = 5.0, extra_tasks: int = 0) -> None:
        """Active calls 0, media ports bindable, fds and tasks back (`extra_tasks`: the test's own)."""
        with trio.move_on_after(timeout):
            while (
                self.bridge.active_calls or open_fds() > self.fds or count_tasks() > self.tasks + extra_tasks
            ):
                await trio.sleep(0.02)
        assert self.bridge.active_calls == 0
        assert media_ports_free() == []
        assert open_fds() <= self.fds, (
            f"fds {self.fds} -> {open_fds()}: {sorted(os.listdir('/proc/self/fd'))}"
        )
        assert count_tasks() <= self.tasks + extra_tasks, f"tasks {self.tasks} -> {count_tasks()}"


@asynccontextmanager
async def call_bridge(
    tmp_path: Path,
    *,
    extensions: Mapping[str, str] = EXTENSIONS,
    services: Services = bridge_services,
    **settings: str,
) -> AsyncIterator[BridgeContext]:
    """The whole bridge on 127.0.0.1 until the block ends (then a graceful stop): upstream mode towards
    SIPp unless `upstream=""`, this suite's media range, a short shutdown grace."""
    flags = {
        "rtp_ports": f"{MEDIA_LOW}-{MEDIA_HIGH}",
        "upstream": UPSTREAM,
        "shutdown_grace": "3",
        **settings,
    }
    if not flags["upstream"]:
        del flags["upstream"]
    async with running_bridge(tmp_path, extensions, services=services, **flags) as context:
        yield context


@asynccontextmanager
async def page(bridge: BridgeContext, **options: object) -> AsyncIterator[SyntheticBrowser]:
    """A synthetic browser pointed at the bridge's WSS port."""
    async with open_synthetic_browser(bridge.wss_addresses[0], **options) as browser:
        yield browser


@asynccontextmanager
async def sipp(
    tmp_path: Path, scenario: str, *, delay_ms: int | None = None, calls: int = 1, **keys: str
) -> AsyncIterator[SippUas]:
    """One SIPp UAS call; a scenario of this directory is found before tests/support/sip's, and
    its `{{key}}` placeholders are filled from `keys` (SIPp checks status codes at load time)."""
    workdir = tmp_path / f"sipp-{scenario}"
    uas = SippUas(scenario, workdir, delay_ms=delay_ms, timeout_s=20)
    uas.argv[uas.argv.index("-m") + 1] = str(calls)  # SIPp exits 0 once all `calls` passed
    if (HERE / f"{scenario}.xml").exists():
        text = (HERE / f"{scenario}.xml").read_text()
        for key, value in keys.items():
            text = text.replace("{{" + key + "}}", value)
        (workdir / f"{scenario}.xml").write_text(text)
        uas.argv[uas.argv.index("-sf") + 1] = str(workdir / f"{scenario}.xml")
    await trio.to_thread.run_sync(uas.start)
    try:
        yield uas
    finally:
        await trio.to_thread.run_sync(uas.stop)


async def sipp_exit(uas: SippUas, timeout: float = 10.0) -> int:
    """SIPp's exit status once its one call is over (0 = the scenario passed)."""
    return await trio.to_thread.run_sync(uas.wait, timeout)


async def scrape_metrics(bridge: BridgeContext) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics over HTTPS; samples by (name, labels)."""
    host, port = bridge.wss_addresses[0]
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=context, https_compatible=True)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"text/plain" in head, head
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(
    samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def register_from(
    bind_port: int, registrar: tuple[str, int], ext: str, password: str, contact: str, timeout: float = 3.0
) -> int:
    """A blocking third-party REGISTER (MD5 digest, qop=auth) sent FROM 127.0.0.1:`bind_port`.

    The embedded registrar routes calls to the address a REGISTER came from (phones behind NAT),
    so a SIPp UAS gets its calls only if its binding was registered from its own port: this is
    sent before SIPp binds that port. Stdlib only, independent of our SIP code.
    """
    host, port = registrar
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", bind_port))
        s.settimeout(timeout)
        call_id, tag, auth = secrets.token_hex(8), secrets.token_hex(4), ""
        code = 0
        for cseq in (1, 2):
            request = (
                f"REGISTER sip:{host} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{bind_port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{ext}@{host}>;tag={tag}\r\nTo: <sip:{ext}@{host}>\r\n"
                f"Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\nExpires: 600\r\n"
                f"{auth}Content-Length: 0\r\n\r\n"
            )
            s.sendto(request.encode(), (host, port))
            while True:
                reply = s.recv(65535).decode(errors="replace")
                code = int(reply.split(" ", 2)[1])
                if code >= 200:
                    break
            found = re.search(r"^WWW-Authenticate:\s*Digest (.*)$", reply, re.M | re.I)
            if code != 401 or auth or found is None:
                return code
            params = {
                k.lower(): v1 or v2 for k, v1, v2 in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', found[1])
            }
            uri = f"sip:{host}"

            def md5(text: str) -> str:
                return hashlib.md5(text.encode()).hexdigest()

            cnonce = secrets.token_hex(4)
            ha1, ha2 = md5(f"{ext}:{params['realm']}:{password}"), md5(f"REGISTER:{uri}")
            response = md5(f"{ha1}:{params['nonce']}:00000001:{cnonce}:auth:{ha2}")
            auth = (
                f'Authorization: Digest username="{ext}", realm="{params["realm"]}", '
                f'nonce="{params["nonce"]}", uri="{uri}", response="{response}", algorithm=MD5, '
                f'cnonce="{cnonce}", qop=auth, nc=00000001\r\n'
            )
        return code
