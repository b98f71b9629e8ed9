"""The relays under test as subprocesses: `mccp-bridge serve` and rtpengine, pinned and bounded.

With one worker (thread) each, both run on RELAY_CPU (the harness pins itself to HARNESS_CPU); with
several (`mccp-bridge serve --workers N`, `rtpengine --num-threads N`) they are not pinned: on a
2-core machine relay and harness then share both CPUs. Same `nice`, loopback only; stopped
(SIGTERM, then SIGKILL after a few seconds) when their context manager exits. A multi-worker
bridge is a supervisor and its N worker processes: `Bridge.pids()` lists them all, and CPU, RSS
and descriptors are summed over them (`cpu_seconds_all`, `rss_kib_all`, `fd_count_all`).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio
from bridge.extensions import ExtensionTable, make_extension, save_extensions
from bridge.workers import split_port_range

REPO = Path(__file__).resolve().parent.parent
RELAY_CPU = 1
HARNESS_CPU = 0
BRIDGE_RTP_PORTS = (14000, 23999)  # 3 ports per call: 1,000 calls over 2 workers fit with room
RTPE_PORTS = (24000, 29999)  # 4 ports per call
CALLER, CALLER_PASSWORD = "100", "bench-caller-secret"
PHONE, PHONE_PASSWORD = "200", "bench-phone-secret"


# The CPUs this process may use before `pin_harness` narrows them to HARNESS_CPU (the relays are
# started after that, and must still be told to go to RELAY_CPU).
ALLOWED_CPUS = frozenset(os.sched_getaffinity(0))


def two_cpus() -> bool:
    return {RELAY_CPU, HARNESS_CPU} <= ALLOWED_CPUS


def pin_prefix(nice: int, *, pin: bool = True) -> list[str]:
    """taskset to RELAY_CPU (with `pin`); with `nice`, a session of its own (see `boost`) and `nice -n`."""
    prefix = ["taskset", "-c", str(RELAY_CPU)] if pin and two_cpus() else []
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


def pin_harness(nice: int, *, pin: bool = True) -> None:
    """Put the harness (and the blaster it starts) on HARNESS_CPU (with `pin`), at `nice`."""
    if pin and two_cpus():
        os.sched_setaffinity(0, {HARNESS_CPU})
    if nice and os.geteuid() == 0:
        os.nice(nice)
        boost(os.getpid(), nice)


# Ports for the relays' listeners: outside the kernel's ephemeral range (32768-60999 by default), so
# that no outgoing connection takes one meanwhile - least of all `_wait_tcp`'s own connects to a
# port nothing listens on yet, which on loopback can pick that very port as their source and
# connect to themselves (TCP simultaneous open), leaving the relay "Address already in use".
# Below the ephemeral range, above the relays' media ports (BRIDGE_RTP_PORTS, RTPE_PORTS) and under the
# tests' fixed ports (31000-33099).
LISTEN_PORTS = (30000, 30999)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port of LISTEN_PORTS that nothing holds now."""
    for _ in range(500):
        port = random.randint(*LISTEN_PORTS)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS[0]}-{LISTEN_PORTS[1]}")


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


def children(pid: int) -> list[int]:
    """The direct children of `pid` (/proc/PID/task/*/children, else a scan of /proc)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with suppress(OSError):
                found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        if found:
            return sorted(set(found))
    except OSError:
        return []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with suppress(OSError, IndexError, ValueError):
                if int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry))
    return sorted(found)


def _alive(pids: list[int], measure: Callable[[int], float]) -> float:
    total = 0.0
    for pid in pids:
        with suppress(OSError, ValueError):  # a process that exited meanwhile counts nothing
            total += measure(pid)
    return total


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds_all(pids: list[int]) -> float:
    return _alive(pids, cpu_seconds)


def rss_kib_all(pids: list[int]) -> int:
    return int(_alive(pids, rss_kib))


def fd_count_all(pids: list[int]) -> int:
    return int(_alive(pids, fd_count))


def listening(port: int) -> int:
    """How many TCP sockets of this network namespace listen on `port` (SO_REUSEPORT: one per worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def udp_ports_bound(low: int, high: int) -> int:
    """How many UDP sockets of this network namespace are bound to a port in `low`..`high`."""
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                if low <= int(line.split()[1].rsplit(":", 1)[1], 16) <= high:
                    count += 1
    return count


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
    workers: int = 1
    browser_port: int = 0  # the browser legs' one port (worker i: + i), 0: a port per call

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def pids(self) -> list[int]:
        """The bridge's processes: the single process, or the supervisor and its workers (asked
        again each time: a worker that died is started again with a new pid)."""
        return [self.pid] if self.workers == 1 else [self.pid, *children(self.pid)]

    def sip_ports(self) -> list[int]:
        """Each worker's SIP port (`sip_port + i`)."""
        return [self.sip_port + i for i in range(self.workers)]

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.wss_port}/mccp"


@asynccontextmanager
async def run_bridge(
    *,
    scrypt_n: int,
    nice: int,
    log_level: str = "warning",
    gc_mode: str | None = None,
    workers: int | None = 1,
    media_timeout: float | None = 300,
    single_port: bool = False,
) -> AsyncIterator[Bridge]:
    """Start the bridge with a caller and a phone extension; yield once it listens (every worker).

    With `gc_mode` (probe, freeze, off) it runs under bench.gcprobe, which times the collector.
    One worker is pinned to RELAY_CPU; several are not (they need every CPU). `workers` None: the
    bridge's default (auto, one per core); `media_timeout` None: the bridge's default.
    `single_port`: every browser leg of a worker on one port (`--rtp-browser-port`).
    """
    count = workers or os.cpu_count() or 1
    data = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    try:
        table = ExtensionTable(())
        for number, password in ((CALLER, CALLER_PASSWORD), (PHONE, PHONE_PASSWORD)):
            table = table.with_extension(make_extension(number, password, realm="mccp-bridge", n=scrypt_n))
        save_extensions(data / "extensions.toml", table)
        (data / "config.toml").write_text("")
        wss_port, sip_port = free_port(), _free_udp_run(count)
        browser_port = _free_udp_run(count) if single_port else 0
        low, high = BRIDGE_RTP_PORTS
        cmd = [
            *pin_prefix(nice, pin=workers == 1),
            *(
                [sys.executable, "-m", "bench.gcprobe"]
                if gc_mode
                # $BENCH_BRIDGE: another build's `mccp-bridge` (A/B runs of two versions)
                else [os.environ.get("BENCH_BRIDGE") or str(Path(sys.executable).parent / "mccp-bridge")]
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
            *(["--media-timeout", str(media_timeout)] if media_timeout is not None else []),
            "--ring-timeout",
            "30",
            # One worker process by default (the product's default is one per core): the figures
            # are per worker, and its CPU is the process's own.
            "--workers",
            str(workers) if workers else "auto",
            *(["--rtp-browser-port", str(browser_port)] if single_port else []),
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
            try:
                await _wait_tcp(wss_port, proc, 30)
                with trio.fail_after(60):
                    while listening(wss_port) < count:
                        if proc.returncode is not None:
                            raise RuntimeError(f"bridge exited with {proc.returncode}")
                        await trio.sleep(0.05)
            except (trio.TooSlowError, RuntimeError) as exc:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the bridge did not start ({exc!r}); its log ends:\n{tail}") from exc
            bridge = Bridge(proc, wss_port, sip_port, log, gc_log, count, browser_port)
            for pid in bridge.pids()[1:]:
                boost(pid, nice)  # workers run in sessions of their own
            yield bridge
        finally:
            with trio.CancelScope(shield=True):
                await _stop(proc)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def calls_per_worker(bridge_ports: list[int], workers: int, browser_port: int = 0) -> list[int]:
    """How many of the calls (their browser-side media ports) each worker holds: worker i owns
    slice i of BRIDGE_RTP_PORTS, or `browser_port + i` in single-port mode."""
    if browser_port:
        return [sum(1 for port in bridge_ports if port == browser_port + i) for i in range(workers)]
    slices = split_port_range(*BRIDGE_RTP_PORTS, workers)
    return [sum(1 for port in bridge_ports if low <= port <= high) for low, high in slices]


def _free_udp_run(count: int) -> int:
    """A UDP port P such that P..P+count-1 are free now (worker i's SIP port is P+i)."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        if port + count - 1 > LISTEN_PORTS[1]:
            continue
        socks = []
        try:
            for i in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port + i))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no run of {count} free UDP ports")


@dataclass
class Rtpengine:
    """A running rtpengine (userspace forwarding, `--num-threads` worker threads)."""

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
async def run_rtpengine(*, nice: int, threads: int = 1) -> AsyncIterator[Rtpengine]:
    """Start rtpengine like the perf recipe: --table=-1, --num-threads=`threads` (pinned to
    RELAY_CPU when 1), loopback only."""
    work = Path(tempfile.mkdtemp(prefix="bench-rtpe-"))
    try:
        ng_port = free_port(socket.SOCK_DGRAM)
        low, high = RTPE_PORTS
        cmd = [
            *pin_prefix(nice, pin=threads == 1),
            "rtpengine",
            "--foreground",
            "--table=-1",
            "--interface=127.0.0.1",
            f"--listen-ng=127.0.0.1:{ng_port}",
            f"--port-min={low}",
            f"--port-max={high}",
            "--log-stderr",
            "--log-level=5",
            f"--num-threads={threads}",
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


async def fetch_metrics(port: int) -> bytes:
    """The body of one GET /metrics on the bridge's HTTPS port (one new connection: one worker)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, context, server_hostname="127.0.0.1", https_compatible=True)
    body = b""
    try:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while chunk := await stream.receive_some(65536):
            body += chunk
    finally:
        await stream.aclose()
    return body
