"""The fault suite's harness: the real `mccp-bridge serve` (one process, first start in a temporary
data dir, every port chosen by the kernel except the media range), with its stdout read line by line
(the first start prints the echo URL: the WSS port and extension 100's password) and its stderr
either read the same way or sent somewhere else (a full disk: /dev/full)."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

URL_RE = re.compile(r"https://127\.0\.0\.1:(\d+)/lite\.html\?server=[^&]+&clr=100&pwd=([^&\s]+)&cld=600")


@dataclass
class Bridge:
    """A running `serve`: its process, what it printed, the WSS port and extension 100's password."""

    process: trio.Process
    data_dir: Path
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    port: int = 0
    password: str = ""
    changed: trio.Event = field(default_factory=trio.Event)

    async def pump(self, stream: trio.abc.ReceiveStream, lines: list[str]) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode(errors="replace") for line in complete)
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, pattern: str, lines: list[str], timeout: float = 15) -> re.Match[str]:
        """The first line of `lines` matching `pattern` (bounded wait)."""
        regex = re.compile(pattern)
        with trio.fail_after(timeout):
            while True:
                for line in lines:
                    if found := regex.search(line):
                        return found
                await self.changed.wait()

    def certificate_files(self) -> tuple[Path, Path]:
        return self.data_dir / "wrtcCert" / "server.crt", self.data_dir / "wrtcCert" / "server.key"


def env(home: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MCCP_BRIDGE_")}
    out["HOME"] = str(home)
    out["PYTHONUNBUFFERED"] = "1"
    return out


@asynccontextmanager
async def serve(home: Path, *flags: str, stderr_file: Path | None = None) -> AsyncIterator[Bridge]:
    """`mccp-bridge serve --workers 1` on 127.0.0.1 until the block ends (then killed if still up).
    With `stderr_file`, stderr is opened on that file (e.g. /dev/full) instead of being read."""
    data_dir = home / "data"
    args = [sys.executable, "-m", "bridge", "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1"]
    args += ["--wss-port", "0", "--sip-port", "0", "--workers", "1", *flags]
    err_target: int = subprocess.PIPE
    err_file = None
    if stderr_file is not None:
        err_file = open(stderr_file, "wb")  # noqa: SIM115 (closed below, after the process)
        err_target = err_file.fileno()
    try:
        process = await trio.lowlevel.open_process(
            args, env=env(home), stdout=subprocess.PIPE, stderr=err_target
        )
        bridge = Bridge(process, data_dir)
        try:
            async with trio.open_nursery() as nursery:
                assert process.stdout is not None
                nursery.start_soon(bridge.pump, process.stdout, bridge.out)
                if process.stderr is not None:
                    nursery.start_soon(bridge.pump, process.stderr, bridge.err)
                found = await bridge.wait_for(URL_RE.pattern, bridge.out, timeout=45)
                bridge.port, bridge.password = int(found[1]), found[2]
                yield bridge
                nursery.cancel_scope.cancel()
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5, shield=True):
                await process.wait()
    finally:
        if err_file is not None:
            err_file.close()


async def server_certificate(port: int) -> bytes:
    """The DER certificate a new TLS connection to the bridge's WSS port gets."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    try:
        await stream.do_handshake()
        der = stream.getpeercert(binary_form=True)
    finally:
        await trio.aclose_forcefully(stream)
    assert der is not None
    return bytes(der)


async def https_get(port: int, path: str) -> bytes:
    """GET `path` over HTTPS (certificate not checked: the test checks it separately)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=context, https_compatible=True
    )
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                data += chunk
    return data
