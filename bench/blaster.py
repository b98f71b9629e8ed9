"""Build and run the C media blaster (bench/blast.c) on the flows of the calls set up."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
from bench.srtp_kdf import SessionKeys

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "blast.c"
BINARY = HERE / ".build" / "blast"


def build() -> Path:
    """Compile blast.c if the binary is missing or older than the source (gcc, -lcrypto)."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    BINARY.parent.mkdir(exist_ok=True)
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Wno-deprecated-declarations", "-o", str(BINARY), str(SOURCE), "-lcrypto"],
        check=True,
    )
    return BINARY


@dataclass(frozen=True, slots=True)
class Flow:
    """One call's media, as the blaster sees it (the relay answers from the port we send to)."""

    relay_browser_port: int
    relay_phone_port: int
    ssrc_browser: int
    ssrc_phone: int
    tx: SessionKeys  # browser -> relay
    rx: SessionKeys  # relay -> browser
    browser_src: str | None = None  # the browser leg's own address (a relay with one browser port)

    def line(self) -> str:
        return (
            f"{self.relay_browser_port} {self.relay_phone_port} {self.ssrc_browser} {self.ssrc_phone} "
            f"{self.tx.line()} {self.rx.line()} {self.browser_src or '-'}"
        )


async def blast(
    flows: list[Flow],
    *,
    browser_fd: int,
    phone_fd: int,
    rate: float,
    seconds: float,
    relay_pids: list[int],
    relay_cpu: int,
    index_base: int,
    drain_ms: int = 500,
) -> dict[str, Any]:
    """Run one step: `rate` packets/s in EACH direction spread over the flows for `seconds`.

    The relay's CPU is summed over `relay_pids`; `relay_cpu` -1: it is not pinned (the load of
    every CPU is read)."""
    binary = build()
    with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as f:
        f.write("\n".join(flow.line() for flow in flows) + "\n")
        flow_file = f.name
    try:
        cmd = [
            str(binary),
            "-F",
            flow_file,
            "-B",
            str(browser_fd),
            "-H",
            str(phone_fd),
            "-r",
            str(rate),
            "-t",
            str(seconds),
            "-p",
            ",".join(str(pid) for pid in relay_pids),
            "-c",
            str(relay_cpu),
            "-w",
            str(drain_ms),
            "-o",
            str(index_base),
        ]
        with trio.fail_after(seconds + 30):
            done = await trio.run_process(
                cmd, capture_stdout=True, capture_stderr=True, pass_fds=(browser_fd, phone_fd), check=False
            )
        if done.returncode != 0:
            raise RuntimeError(f"blast failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result
    finally:
        Path(flow_file).unlink(missing_ok=True)
