"""`serve --workers N`: one bridge process per core, under a thin supervisor (issue 6).

Theory of operation
-------------------
`mccp-bridge serve --workers N` with N > 1 does not serve itself. The *supervisor* (this module's
`supervise`, run by `bridge.cli`) checks the config, makes sure the certificate exists (so that N
workers do not race to create it), reserves the WSS port when it is 0, and starts N *workers*: the same
executable again (`python -m bridge`, or the zipapp) with the same arguments plus the internal flags
`--worker-index I --workers N --wss-port P --worker-control FD`. Each worker is a whole bridge
(`bridge.app.run_bridge`) on its share of the resources:

| resource | worker I of N |
|---|---|
| WSS/HTTPS port | the same port in every worker, bound with SO_REUSEPORT: the kernel spreads connections |
| SIP port | `sip_port + I` (0 stays 0: any free port), so a call's dialog stays in the worker that runs it |
| media ports | slice I of `rtp_ports` (`split_port_range`: N disjoint, even-aligned slices) |
| registrar | worker 0 answers REGISTER and saves `<data_dir>/bindings.json`; the others read it |
| echo extension | its own, on its own loopback port |

The control socket (one AF_UNIX socketpair per worker, the worker's end passed as FD) carries one
line from the worker: `ready` once it serves, or `error STATUS MESSAGE` when it cannot start. The
supervisor never writes to it: when the supervisor dies, the worker reads EOF and stops gracefully
(workers run in their own session, so a terminal's Ctrl-C reaches only the supervisor).

Signals to the supervisor: SIGTERM/SIGINT are forwarded as SIGTERM (each worker ends its calls with
BYE + MCCP hangup, as a single process does); the supervisor exits 0 when all have exited 0, within
`shutdown_grace + STOP_MARGIN` seconds, else it kills them and exits 1. A second SIGTERM/SIGINT kills
the workers at once (exit 128+signal). SIGHUP is forwarded (extensions and certificate reloaded in
every worker). A worker that fails to start stops the others, and the supervisor exits with that
worker's status and one line naming it. A worker that dies later is logged and started again after
`RESTART_DELAY` seconds (its port share is the same); the delay doubles, up to `MAX_RESTART_DELAY`,
while it keeps dying within `STABLE_RUN` seconds (a worker that cannot start again says why).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

__all__ = [
    "SINGLE",
    "WorkerSlot",
    "reserve_port",
    "split_port_range",
    "supervise",
    "worker_command",
    "worker_sip_port",
]

log = logging.getLogger("bridge.workers")

READY_TIMEOUT = 60.0  # seconds a worker has to say `ready`
STOP_MARGIN = 10.0  # seconds on top of shutdown_grace before the supervisor kills the workers
RESTART_DELAY = 1.0  # seconds before a worker that died is started again
MAX_RESTART_DELAY = 30.0  # the longest of those delays, for a worker that keeps dying
STABLE_RUN = 60.0  # a worker that ran this long before dying gets the short delay again
MIN_MEDIA_PORTS = 4  # one call: a browser port and an even/odd RTP/RTCP pair


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Which worker this process is: `index` of `count`, and its control socket fd (None: none)."""

    index: int = 0
    count: int = 1
    control_fd: int | None = None

    @property
    def answers_register(self) -> bool:
        """Whether this process is the registrar (the single process, or worker 0)."""
        return self.index == 0

    @property
    def label(self) -> str:
        """`worker I` for the log prefix."""
        return f"worker {self.index}"


SINGLE = WorkerSlot()


def split_port_range(low: int, high: int, count: int) -> list[tuple[int, int]]:
    """`low..high` (inclusive) cut into `count` disjoint slices, each an even number of ports.

    Every slice starts on an even port when `low` is even (RTP on even ports, RFC 3550 §11); the
    last one takes what is left. Raises ValueError when a slice would hold less than one call. One
    worker gets the whole range, whatever its size.
    """
    if count < 1:
        raise ValueError(f"worker count must be at least 1, got {count}")
    if count == 1:
        return [(low, high)]
    size = (high - low + 1) // count // 2 * 2
    if size < MIN_MEDIA_PORTS:
        raise ValueError(
            f"rtp_ports {low}-{high} is too small for {count} workers "
            f"(each needs at least {MIN_MEDIA_PORTS} ports)"
        )
    slices = [(low + i * size, low + (i + 1) * size - 1) for i in range(count)]
    slices[-1] = (slices[-1][0], high)
    return slices


def worker_sip_port(sip_port: int, index: int) -> int:
    """The SIP port of worker `index`: `sip_port + index` (0 stays 0); ValueError beyond 65535."""
    if sip_port == 0:
        return 0
    port = sip_port + index
    if port > 65535:
        raise ValueError(f"sip_port {sip_port} + worker {index} is beyond 65535")
    return port


def reserve_port(host: str) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT to a free port of `host`, not listening.

    Keeping it open keeps the port ours while the workers bind it too (same user, SO_REUSEPORT);
    as it does not listen, it gets no connections.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


def worker_command() -> tuple[list[str], dict[str, str]]:
    """How to start this same program again: (argv prefix, environment).

    A zipapp (`python3 mccp-bridge.pyz`) runs itself; otherwise `python -m bridge` with the directory
    holding the `bridge` package put first on PYTHONPATH.
    """
    env = dict(os.environ)
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and os.path.isfile(argv0) and zipfile.is_zipfile(argv0):
        return [sys.executable, argv0], env
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (package_root, env.get("PYTHONPATH"))))
    return [sys.executable, "-m", "bridge"], env


@dataclass(eq=False)
class _Worker:
    index: int
    process: trio.Process | None = None
    ready: trio.Event = field(default_factory=trio.Event)
    status: int | None = None


class StartFailed(Exception):
    """A worker could not start; `status` is the exit status to use, `str()` the one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Supervisor:
    def __init__(self, argv: Sequence[str], count: int, grace: float, on_ready: Callable[[], None]) -> None:
        self.argv = list(argv)
        self.count = count
        self.grace = grace
        self.on_ready = on_ready
        self.workers = [_Worker(i) for i in range(count)]
        self.stopping = False
        self.failed: StartFailed | None = None
        self.exit_status = 0
        self.all_ready = trio.Event()
        self._nursery: trio.Nursery | None = None

    def _signal_all(self, signum: int) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM every worker (once), and kill what is left after the grace period."""
        if self.stopping:
            return
        self.stopping = True
        self._signal_all(signal.SIGTERM)
        assert self._nursery is not None
        self._nursery.start_soon(self._kill_late)

    async def _kill_late(self) -> None:
        await trio.sleep(self.grace + STOP_MARGIN)
        late = [w.index for w in self.workers if w.process is not None and w.process.returncode is None]
        if late:
            log.error("workers %s still running %gs after SIGTERM: killed", late, self.grace + STOP_MARGIN)
            self._signal_all(signal.SIGKILL)
            self.exit_status = self.exit_status or 1

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._watch_signals)
            nursery.start_soon(self._announce_ready)
            async with trio.open_nursery() as workers:
                for worker in self.workers:
                    workers.start_soon(self._keep, worker)
            nursery.cancel_scope.cancel()
        if self.failed is not None:
            raise self.failed
        return self.exit_status

    async def _announce_ready(self) -> None:
        for worker in self.workers:
            await worker.ready.wait()
        log.info("all %d workers ready", self.count)
        self.all_ready.set()
        self.on_ready()

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker; start it again if it dies after it was ready, until stopping."""
        delay = RESTART_DELAY
        while True:
            started = trio.current_time()
            await self._run_once(worker)
            if self._stopped():
                return
            if trio.current_time() - started >= STABLE_RUN:
                delay = RESTART_DELAY
            log.error("worker %d died (%s); starting it again in %gs", worker.index,
                      _describe(worker.status), delay)  # fmt: skip
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RESTART_DELAY)
            if self._stopped():
                return

    def _stopped(self) -> bool:
        # a method, so that mypy does not carry an `if self.stopping` narrowing across awaits
        return self.stopping

    async def _run_once(self, worker: _Worker) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        prefix, env = worker_command()
        args = [*prefix, *self.argv, "--workers", str(self.count)]
        args += ["--worker-index", str(worker.index), "--worker-control", str(theirs.fileno())]
        control = trio.socket.from_stdlib_socket(ours)
        with control:
            with theirs:
                process = await trio.lowlevel.open_process(
                    args, env=env, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            worker.process = process
            log.info("worker %d started, pid %d", worker.index, process.pid)
            was_ready = worker.ready.is_set()
            line = await self._read_status(control, process)
            ready_now = line == "ready"
            if ready_now:
                if was_ready:
                    log.info("worker %d ready again", worker.index)
                worker.ready.set()
                while await control.recv(4096):
                    pass
            elif was_ready and line is not None and line.startswith("error "):
                log.error("worker %d could not start again: %s", worker.index, line.split(" ", 2)[-1])
            await process.wait()
        worker.status = process.returncode
        if worker.ready.is_set() or self.stopping:
            if self.stopping:
                # A worker stopped before it was ready (its signal handlers not yet installed) had
                # no call to end: SIGTERM's default action is a clean stop for it.
                clean = worker.status == 0 or (worker.status == -signal.SIGTERM and not ready_now)
                log.log(logging.INFO if clean else logging.ERROR,
                        "worker %d exited (%s)", worker.index, _describe(worker.status))  # fmt: skip
                if not clean:
                    self.exit_status = self.exit_status or 1
            return
        # It never said `ready`: a start failure stops everything.
        status, text = 1, f"exited before it was ready ({_describe(worker.status)})"
        if line is not None and line.startswith("error "):
            code, _, text = line.removeprefix("error ").partition(" ")
            status = int(code) if code.isdigit() and int(code) > 0 else 1
        elif line == "timeout":
            text = f"not ready within {READY_TIMEOUT:g}s"
        if self.failed is None:
            self.failed = StartFailed(status, f"worker {worker.index}: {text}")
        self.stop()

    async def _read_status(self, control: trio.socket.SocketType, process: trio.Process) -> str | None:
        """The worker's status line (`ready`, `error ...`), None at EOF, `timeout` (then killed)."""
        buffer = b""
        with trio.move_on_after(READY_TIMEOUT):
            while b"\n" not in buffer:
                chunk = await control.recv(4096)
                if not chunk:
                    return None
                buffer += chunk
            return buffer.split(b"\n", 1)[0].decode("utf-8", "replace")
        process.kill()
        return "timeout"

    async def _watch_signals(self) -> None:
        kinds = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        with trio.open_signal_receiver(*kinds) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    log.info("%s: reloading every worker", name)
                    self._signal_all(signal.SIGHUP)
                elif self.stopping:
                    log.warning("%s again: killing the workers", name)
                    self._signal_all(signal.SIGKILL)
                    self.exit_status = 128 + signum
                else:
                    log.info("%s: stopping the workers (grace %gs)", name, self.grace)
                    self.stop()


def supervise(
    argv: Sequence[str], *, count: int, grace: float, on_ready: Callable[[], None] = lambda: None
) -> int:
    """Run `count` workers (`argv`: this program's `serve` arguments) until they stop; the exit status.

    Raises `StartFailed` when a worker could not start (the others are stopped first).
    """
    return trio.run(_Supervisor(argv, count, grace, on_ready).run)


def _describe(status: int | None) -> str:
    if status is None:
        return "status unknown"
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"exit status {status}"
