"""The relays under test as subprocesses: `mccp-bridge serve` and rtpengine, pinned and bounded.

Both run on RELAY_CPU (the harness pins itself to HARNESS_CPU), at the same `nice`, loopback only,
and are stopped (SIGTERM, then SIGKILL after a few seconds) when their context manager exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio
from bridge.extensions import ExtensionTable, make_extension, save_extensions

REPO = Path(__file__).resolve().parent.parent
RELAY_CPU = 1
HARNESS_CPU = 0
BRIDGE_RTP_PORTS = (20000, 23999)
RTPE_PORTS = (24000, 29999)
CALLER, CALLER_PASSWORD = "100", "bench-caller-secret"
PHONE, PHONE_PASSWORD = "200", "bench-phone-secret"


# The CPUs this process may use before `pin_harness` narrows them to HARNESS_CPU (the relays are
# started after that, and must still be told to go to RELAY_CPU).
ALLOWED_CPUS = frozenset(os.sched_getaffinity(0))


def two_cpus() -> bool:
    return {RELAY_CPU, HARNESS_CPU} <= ALLOWED_CPUS


def pin_prefix(nice: int) -> list[str]:
    """taskset to RELAY_CPU; with `nice`, a session of its own (see `boost`) and `nice -n`."""
    prefix = ["taskset", "-c", str(RELAY_CPU)] if two_cpus() else []
    if nice and os.geteuid() == 0:
        prefix += ["setsid", "nice", "-n", str(nice)]
    return prefix


def boost(pid: int, nice: int) -> None:
    """With the kernel's autogroup scheduling (sched_autogroup_enabled=1) a process's nice only
    counts inside its session: the session's own nice (/proc/PID/autogroup) is what competes with
    the other sessions on a shared machine. Give the relay's (and the harness's) session `nice`."""
    if not nice or os.geteuid() != 0:
        return
    with suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def pin_harness(nice: int) -> None:
    """Put the harness (and the blaster it starts) on HARNESS_CPU, at `nice`."""
    if two_cpus():
        os.sched_setaffinity(0, {HARNESS_CPU})
    if nice and os.geteuid() == 0:
        os.nice(nice)
        boost(os.getpid(), nice)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process, exited threads included (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _stop(proc: trio.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(8):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _wait_tcp(port: int, proc: trio.Process, timeout: float) -> None:
    with trio.fail_after(timeout):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"relay exited with {proc.returncode}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


@dataclass
class Bridge:
    """A running `mccp-bridge serve`."""

    proc: trio.Process
    wss_port: int
    sip_port: int
    log: Path
    gc_log: Path | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.wss_port}/mccp"


@asynccontextmanager
async def run_bridge(
    *, scrypt_n: int, nice: int, log_level: str = "warning", gc_mode: str | None = None
) -> AsyncIterator[Bridge]:
    """Start the bridge with a caller and a phone extension; yield once it listens.

    With `gc_mode` (probe, freeze, off) it runs under bench.gcprobe, which times the collector.
    """
    data = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    try:
        table = ExtensionTable(())
        for number, password in ((CALLER, CALLER_PASSWORD), (PHONE, PHONE_PASSWORD)):
            table = table.with_extension(make_extension(number, password, realm="mccp-bridge", n=scrypt_n))
        save_extensions(data / "extensions.toml", table)
        (data / "config.toml").write_text("")
        wss_port, sip_port = free_port(), free_port(socket.SOCK_DGRAM)
        low, high = BRIDGE_RTP_PORTS
        cmd = [
            *pin_prefix(nice),
            *(
                [sys.executable, "-m", "bench.gcprobe"]
                if gc_mode
                else [str(Path(sys.executable).parent / "mccp-bridge")]
            ),
            "serve",
            "--data-dir",
            str(data),
            "--listen",
            "127.0.0.1",
            "--wss-port",
            str(wss_port),
            "--sip-port",
            str(sip_port),
            "--rtp-ports",
            f"{low}-{high}",
            "--log-level",
            log_level,
            "--media-timeout",
            "300",
            "--ring-timeout",
            "30",
            # One worker process (the default is one per core): the figures are per worker, and
            # its CPU is the process's own.
            "--workers",
            "1",
        ]
        log = data / "bridge.log"
        gc_log = Path(tempfile.gettempdir()) / f"bench-gc-{wss_port}.json" if gc_mode else None
        env = dict(os.environ, BENCH_GC_MODE=gc_mode or "", BENCH_GC_LOG=str(gc_log or ""))
        with open(log, "wb") as out:
            proc = await trio.lowlevel.open_process(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(REPO)
            )
        try:
            await trio.sleep(0.05)
            boost(proc.pid, nice)
            await _wait_tcp(wss_port, proc, 30)
            yield Bridge(proc, wss_port, sip_port, log, gc_log)
        finally:
            with trio.CancelScope(shield=True):
                await _stop(proc)
    finally:
        shutil.rmtree(data, ignore_errors=True)


@dataclass
class Rtpengine:
    """A running rtpengine (userspace forwarding, one worker thread)."""

    proc: trio.Process
    ng_port: int
    log: Path

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def guard_hits(self) -> int:
        """How often its receive-queue guard fired so far (the stream is dead afterwards)."""
        text = self.log.read_text(errors="replace")
        return text.count("Too many packets in UDP receive queue") + text.count("discarding packet")


def rtpengine_available() -> bool:
    return shutil.which("rtpengine") is not None


@asynccontextmanager
async def run_rtpengine(*, nice: int) -> AsyncIterator[Rtpengine]:
    """Start rtpengine like the perf recipe: --table=-1, --num-threads=1, loopback only."""
    work = Path(tempfile.mkdtemp(prefix="bench-rtpe-"))
    try:
        ng_port = free_port(socket.SOCK_DGRAM)
        low, high = RTPE_PORTS
        cmd = [
            *pin_prefix(nice),
            "rtpengine",
            "--foreground",
            "--table=-1",
            "--interface=127.0.0.1",
            f"--listen-ng=127.0.0.1:{ng_port}",
            f"--port-min={low}",
            f"--port-max={high}",
            "--log-stderr",
            "--log-level=5",
            "--num-threads=1",
            "--delete-delay=0",
            "--timeout=300",
            f"--pidfile={work / 'rtpe.pid'}",
        ]
        log = work / "rtpengine.log"
        with open(log, "wb") as out:
            proc = await trio.lowlevel.open_process(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            from bench.ng import NgClient

            await trio.sleep(0.05)
            boost(proc.pid, nice)
            ng = NgClient(ng_port)
            try:
                with trio.fail_after(10):
                    while True:
                        if proc.returncode is not None:
                            raise RuntimeError(f"rtpengine exited: {log.read_text()[-2000:]}")
                        try:
                            with trio.fail_after(0.3):
                                if (await ng.cmd({"command": "ping"}, timeout=0.3)).get("result") == "pong":
                                    break
                        except (trio.TooSlowError, OSError):
                            await trio.sleep(0.1)
            finally:
                ng.close()
            yield Rtpengine(proc, ng_port, log)
        finally:
            with trio.CancelScope(shield=True):
                await _stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
