"""One media plane per worker process (Trio edge): every media socket of every call read by one task.

Why: a Trio task per socket costs a reschedule, an `outcome` and an `epoll_ctl` re-arm (Trio arms
EPOLLONESHOT) for every packet of every socket; at 50 packets/s per call nothing amortises that
(bench/README.md, profile; shared/recipes/perf: a plain `select.epoll` drain loop ran at 0.92x
rtpengine's CPU per packet, per-socket Trio readers at 1.44x).

How: `MediaPlane` owns one level-triggered `select.epoll` and a registry fd -> handler. A handler
is a plain synchronous callable `handler(now)` that reads ONE datagram from its non-blocking socket
and processes it inline, returning True if there was one. `MediaPlane.run` is one task::

    while True:
        events = epoll.poll(0, max_events)           # every ready socket, with one `now`
        if not events:
            await trio.lowlevel.wait_readable(epoll) # idle: one re-arm, woken by the next datagram
            continue
        for fd, _ in events:
            if handlers[fd](now) and backlog(fd):     # one read, or a drain (below)
                ... up to DRAIN_CAP - 1 more reads
        ... unregister the handlers that raised (below)
        await trio.sleep_until(start + coalesce)     # if busy (below), else a plain checkpoint

Coalescing (interrupt mitigation, as NAPI does for network cards): when packets come faster than
one pass per `coalesce` seconds, the plane stops waking per packet. A pass that starts less than
2 x `coalesce` after the previous one ends with `trio.sleep_until(start + coalesce)`, and the next pass
polls the epoll directly: whatever arrived meanwhile is served in one pass, for one Trio wake-up
(with the pass in C, below, the wait is on a timer descriptor rather than a Trio deadline).
At low rates nothing changes (one wake-up per datagram, no added delay); at high rates a datagram
waits at most `coalesce` (1 ms by default, against the 20 ms between a call's packets) and the
cost of a wake-up is shared by every packet of the interval (bench/README.md, results).

Reads per socket and pass: one, unless the socket was served in the previous pass too (a backlog:
it held more than one datagram) or the pass is saturated (more ready sockets than one pass takes:
each likely holds several); then up to DRAIN_CAP. At 50 packets/s per call a socket almost always
holds one datagram, and the read that finds it empty costs a system call and an exception (~2.5 us,
some 15 % of a relayed packet); a socket with more is reported again by the level-triggered epoll on
the next pass, and drained from then on. The rule lives here, once, for every handler.

Level-triggered: a socket left with data (its handler hit its cap) is reported again next pass, so
no datagram is stranded, and the kernel rotates its ready list, so `max_events` bounds a pass
fairly. Each pass ends at a schedule point (the coalescing sleep or a checkpoint): signalling
tasks (WebSocket pings, SIP, call timers) run between passes however heavy the media load.

Registration and unregistration are plain synchronous calls, safe at any time, including from a
handler during a pass (a handler may end a call): a descriptor unregistered during a pass is not
served for the rest of it, and a handler that replaced or unregistered itself is not called again.
Unregister a descriptor BEFORE closing it: the epoll keys on the open file, so a closed duplicate
of a still-open socket would otherwise stay registered.

A handler that raises (a bug: bad input is the handler's to drop and count) is unregistered, the
error counted and logged, and its `on_error` callback told; the plane and the other calls go on.

The pass in C: with `steady` (calls relay their steady stream in C, rtp._steady), a pass is run by
`rtp._steady.Dispatcher` (src/rtp/_dispatch.c): the same loop and drain rule, without building the
event list, looking up and calling a Python handler and testing its result per ready socket, and
with a SteadyRelay's handlers run directly. That loop was most of the Python left per relayed
packet (bench/README.md). The Python pass below stays the definition, and the one used without
the extension or with `steady=False`; tests run both, and compare them pass by pass
(tests/unit/rtp/test_plane_passes.py).
"""

from __future__ import annotations

import logging
import math
import select
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Protocol

from trio.testing import MockClock

import trio
from rtp.srtp import PacketBuffer

try:  # the pass in C (src/rtp/_dispatch.c), built with rtp._steady where a compiler is
    from rtp import _steady
except ImportError:  # pragma: no cover - the wheel without its extension
    _steady = None  # type: ignore[assignment]

__all__ = [
    "COALESCE",
    "DRAIN_CAP",
    "MAX_EVENTS",
    "ErrorHandler",
    "Handler",
    "MediaPlane",
    "PlaneCounters",
    "open_media_plane",
]

log = logging.getLogger(__name__)

MAX_EVENTS = 256  # ready sockets served per pass (the rest are reported again next pass)
DRAIN_CAP = 16  # datagrams read from one socket in one pass when it has a backlog
COALESCE = 0.001  # seconds: the shortest interval between passes once packets come faster (docstring)

Handler = Callable[[float], bool | None]  # True: it read a datagram (there may be more)
ErrorHandler = Callable[[BaseException], None]


class _FileLike(Protocol):
    def fileno(self) -> int: ...


@dataclass(slots=True)
class PlaneCounters:
    """What the plane did: passes, handler calls, handlers that raised, passes that coalesced."""

    passes: int = 0
    coalesced: int = 0  # passes that ended with a coalescing sleep (packets faster than `coalesce`)
    handler_calls: int = 0
    handler_errors: int = 0
    # How late the plane got back after a busy pass (its coalescing sleep's end, or its schedule
    # point): other tasks ran, the collector ran, or the process waited for a CPU. A datagram that
    # arrived meanwhile waited that long in its socket: the plane's share of the added latency.
    late_2ms: int = 0
    late_10ms: int = 0
    late_50ms: int = 0


class MediaPlane:
    """One epoll for all the media sockets of a worker; `run` is its only task (module docstring)."""

    def __init__(
        self, *, max_events: int = MAX_EVENTS, coalesce: float = COALESCE, steady: bool = True
    ) -> None:
        if coalesce < 0:
            raise ValueError("coalesce must be >= 0 seconds")
        self.max_events = max_events
        self.coalesce = coalesce
        self.steady = steady  # calls may relay their steady stream in C (rtp.media, rtp._steady)
        self.counters = PlaneCounters()
        # One receive buffer for every socket of the plane: handlers run one at a time and are
        # done with a datagram (sent, copied or dropped) before they read the next, so the calls
        # share it, and it stays in the CPU's cache (a buffer per call is a cold one per packet).
        self.buffer = PacketBuffer()
        self._epoll = select.epoll()
        # The pass in C (the module docstring); it also times the coalescing wait: Trio waits for
        # its timer descriptor instead of a `trio.sleep_until`, whose cancel scope, deadline and
        # Cancelled raised and caught cost ~90 us of CPU per pass, against ~25 (and it wakes on
        # time, where Trio's sleeps wake up to ~1 ms late: its epoll timeout is in milliseconds).
        self._dispatcher = (
            _steady.Dispatcher(self._epoll.fileno(), max_events, DRAIN_CAP)
            if steady and _steady is not None
            else None
        )
        self._handlers: dict[int, Handler] = {}
        self._on_error: dict[int, ErrorHandler | None] = {}
        self._served: dict[int, int] = {}  # fd -> the pass that last served it (the drain rule)
        self._passes = 0  # the Python pass's own count (the drain rule)
        self._failures: list[tuple[int, Handler, Exception]] = []  # of the last pass (`run`)
        # One pass: serve_pass(now, failures) -> the number of ready sockets (0: none was ready)
        self.serve_pass: Callable[[float, list[tuple[int, Handler, Exception]]], int] = (
            self._dispatcher.serve if self._dispatcher is not None else self._serve_in_python
        )
        self._closed = False

    def __len__(self) -> int:
        """The number of registered descriptors."""
        return len(self._handlers)

    @property
    def passes_in_c(self) -> bool:
        """Whether each pass runs in C (rtp._steady.Dispatcher; the module docstring)."""
        return self._dispatcher is not None

    @property
    def closed(self) -> bool:
        return self._closed

    def register(self, sock: _FileLike, handler: Handler, on_error: ErrorHandler | None = None) -> None:
        """Serve `sock` with `handler(now)` whenever it is readable, from the next pass on.

        `sock` must be non-blocking and stay open until `unregister`. Raises
        `trio.ClosedResourceError` once the plane is closed, ValueError if already registered.
        """
        if self._closed:
            raise trio.ClosedResourceError("the media plane is closed")
        fd = sock.fileno()
        if fd in self._handlers:
            raise ValueError(f"descriptor {fd} is already registered")
        if self._dispatcher is not None:
            self._dispatcher.add(fd, handler)
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            if self._dispatcher is not None:
                self._dispatcher.remove(fd)
            raise
        self._handlers[fd] = handler
        self._on_error[fd] = on_error
        self._served[fd] = -2

    def replace(self, sock: _FileLike, handler: Handler) -> None:
        """Serve the registered `sock` with `handler` from now on. KeyError if not registered;
        nothing once the plane is closed (as `unregister`)."""
        fd = sock.fileno()
        if self._closed:
            return
        if fd not in self._handlers:
            raise KeyError(fd)
        if self._dispatcher is not None:
            self._dispatcher.replace(fd, handler)
        self._handlers[fd] = handler

    def unregister(self, sock: _FileLike | int) -> None:
        """Stop serving `sock` (before closing it). Idempotent; safe during a pass."""
        fd = sock if isinstance(sock, int) else sock.fileno()
        self._on_error.pop(fd, None)
        self._served.pop(fd, None)
        if self._dispatcher is not None:
            self._dispatcher.remove(fd)
        if self._handlers.pop(fd, None) is None or self._closed:
            return
        with suppress(OSError):
            self._epoll.unregister(fd)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the registered sockets until cancelled; the epoll is closed on the way out."""
        epoll, counters = self._epoll, self.counters
        serve, dispatcher = self.serve_pass, self._dispatcher
        # The timer descriptor counts real time: under a test's MockClock the wait stays a Trio
        # deadline, which the mock clock moves (and autojumps to) like every other.
        timer = dispatcher is not None and not isinstance(trio.lowlevel.current_clock(), MockClock)
        coalesce, last = self.coalesce, -math.inf
        failures = self._failures
        task_status.started()
        try:
            while True:
                now = trio.current_time()
                ready = serve(now, failures)
                if not ready:
                    await trio.lowlevel.wait_readable(epoll)
                    continue
                busy = now - last < 2 * coalesce  # the previous pass, or the one before its sleep
                last = now
                counters.passes += 1
                counters.handler_calls += ready
                if failures:
                    for fd, handler, exc in failures:
                        self._failed(fd, handler, exc)
                    failures.clear()
                # A schedule point after every pass: signalling tasks run however heavy the media.
                if busy:
                    counters.coalesced += 1
                    due = now + coalesce
                    if timer and dispatcher is not None:  # the same wait, on a timer descriptor
                        dispatcher.arm(due - trio.current_time())
                        await trio.lowlevel.wait_readable(dispatcher.timer_fd)
                    else:
                        await trio.sleep_until(due)
                    late = trio.current_time() - due
                    if late > 0.002:
                        self._late(late)
                else:
                    await trio.lowlevel.checkpoint()
        finally:
            self.close()

    def _serve_in_python(self, now: float, failures: list[tuple[int, Handler, Exception]]) -> int:
        """One pass (the module docstring): the number of ready sockets, 0 if none was ready.

        A handler's Exception goes to `failures` as (fd, handler, exception), for `run` to handle
        after the pass. `rtp._steady.Dispatcher.serve` is the same in C.
        """
        events = self._epoll.poll(0, self.max_events)
        if not events:
            return 0
        handlers, served = self._handlers, self._served
        saturated = len(events) >= self.max_events
        passes = self._passes = self._passes + 1
        for fd, _mask in events:
            handler = handlers.get(fd)
            if handler is None:  # unregistered earlier in this pass
                continue
            backlog = saturated or served[fd] == passes - 1
            served[fd] = passes
            try:
                if handler(now) and backlog:
                    for _ in range(DRAIN_CAP - 1):  # unless it replaced or unregistered itself
                        if handlers.get(fd) is not handler or not handler(now):
                            break
            except Exception as exc:  # a bug in one call's handler: that call only
                failures.append((fd, handler, exc))
        return len(events)

    def _late(self, late: float) -> None:
        counters = self.counters
        counters.late_2ms += 1
        if late > 0.010:
            counters.late_10ms += 1
            if late > 0.050:
                counters.late_50ms += 1

    def _failed(self, fd: int, handler: Handler, exc: Exception) -> None:
        self.counters.handler_errors += 1
        log.error("media handler for descriptor %d failed; unregistered", fd, exc_info=exc)
        if self._handlers.get(fd) is not handler:  # it unregistered itself before raising
            return
        on_error = self._on_error.get(fd)
        self.unregister(fd)
        if on_error is not None:
            on_error(exc)

    def close(self) -> None:
        """Close the epoll (the sockets stay their owners'). Idempotent; `run` does it on exit."""
        if self._closed:
            return
        self._closed = True
        if self._dispatcher is not None:
            trio.lowlevel.notify_closing(self._dispatcher.timer_fd)
            self._dispatcher.close()  # before the epoll's number can be reused; closes the timer
        self._handlers.clear()
        self._on_error.clear()
        self._served.clear()
        trio.lowlevel.notify_closing(self._epoll)
        self._epoll.close()


@asynccontextmanager
async def open_media_plane(
    *, max_events: int = MAX_EVENTS, coalesce: float = COALESCE, steady: bool = True
) -> AsyncIterator[MediaPlane]:
    """A running `MediaPlane` for the block (its task in a nursery of its own); closed on exit."""
    plane = MediaPlane(max_events=max_events, coalesce=coalesce, steady=steady)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(plane.run)
            yield plane
            nursery.cancel_scope.cancel()
    finally:
        plane.close()
