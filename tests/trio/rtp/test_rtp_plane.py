"""rtp.plane over loopback: one epoll task serving many sockets through synchronous handlers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

import trio
from rtp.plane import MediaPlane, open_media_plane


@pytest.fixture(params=[False, True], ids=["python", "c"])
def in_c(request: pytest.FixtureRequest) -> bool:
    """Each test runs with the pass in Python (the definition) and in C (rtp._steady.Dispatcher)."""
    assert MediaPlane(steady=True).passes_in_c, "rtp._steady was not built"
    assert not MediaPlane(steady=False).passes_in_c
    return bool(request.param)


@contextmanager
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(receiver, sender): non-blocking loopback sockets, the sender connected to the receiver."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        tx.connect(rx.getsockname())
        yield rx, tx


def drainer(sock: socket.socket, got: list[tuple[bytes, float]], cap: int = 64) -> Callable[[float], None]:
    def handler(now: float) -> None:
        for _ in range(cap):
            try:
                got.append((sock.recv(2048), now))
            except BlockingIOError:
                return

    return handler


async def wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await trio.sleep(0.005)


async def test_every_registered_socket_is_served_with_one_now_per_pass(in_c: bool) -> None:
    with trio.fail_after(10), udp_pair() as (a, a_tx), udp_pair() as (b, b_tx):
        async with open_media_plane(steady=in_c) as plane:
            got_a: list[tuple[bytes, float]] = []
            got_b: list[tuple[bytes, float]] = []
            plane.register(a, drainer(a, got_a))
            plane.register(b, drainer(b, got_b))
            assert len(plane) == 2
            for i in range(10):
                a_tx.send(b"a%d" % i)
                b_tx.send(b"b%d" % i)
            await wait_for(lambda: len(got_a) == len(got_b) == 10)
            assert [d for d, _ in got_a] == [b"a%d" % i for i in range(10)]
            assert [d for d, _ in got_b] == [b"b%d" % i for i in range(10)]
            assert plane.counters.passes >= 1
            assert plane.counters.handler_calls >= 2
            plane.unregister(a)
            plane.unregister(a)  # idempotent
            a_tx.send(b"late")
            b_tx.send(b"b10")
            await wait_for(lambda: len(got_b) == 11)
            assert len(got_a) == 10
            assert len(plane) == 1


async def test_a_capped_handler_is_served_again_and_other_tasks_run_between_passes(in_c: bool) -> None:
    """Level-triggered: a handler that takes one datagram per call still gets them all, one pass
    each, and a busy signalling task keeps running while they are (no starvation)."""
    with trio.fail_after(10), udp_pair() as (rx, tx):
        ticks = 0
        seen_ticks: list[int] = []

        def one_at_a_time(now: float) -> None:
            rx.recv(2048)
            seen_ticks.append(ticks)

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0)

        async with open_media_plane(steady=in_c) as plane, trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            for i in range(50):
                tx.send(b"%d" % i)
            plane.register(rx, one_at_a_time)
            await wait_for(lambda: len(seen_ticks) == 50)
            # Trio runs each runnable task once per scheduler batch, in any order: over any two
            # passes the ticker ran at least once.
            assert all(later > earlier for earlier, later in zip(seen_ticks, seen_ticks[2:], strict=False))
            nursery.cancel_scope.cancel()


async def test_a_handler_may_unregister_another_during_a_pass(in_c: bool) -> None:
    """Both sockets are ready in the same pass; whichever handler runs first unregisters (and
    closes) the other, which is then not served."""
    with trio.fail_after(10), udp_pair() as (a, a_tx), udp_pair() as (b, b_tx):
        async with open_media_plane(steady=in_c) as plane:
            served: list[str] = []

            def make(name: str, me: socket.socket, other: socket.socket) -> Callable[[float], None]:
                def handler(now: float) -> None:
                    served.append(name)
                    me.recv(2048)
                    plane.unregister(other)
                    plane.unregister(me)

                return handler

            a_tx.send(b"x")
            b_tx.send(b"y")
            await trio.sleep(0.05)  # both are readable before either is registered
            plane.register(a, make("a", a, b))
            plane.register(b, make("b", b, a))
            await wait_for(lambda: plane.counters.passes >= 1)
            await trio.sleep(0.05)
            assert len(served) == 1
            assert len(plane) == 0


async def test_a_failing_handler_is_unregistered_and_the_others_go_on(in_c: bool) -> None:
    with trio.fail_after(10), udp_pair() as (bad, bad_tx), udp_pair() as (good, good_tx):
        async with open_media_plane(steady=in_c) as plane:
            errors: list[BaseException] = []

            def broken(now: float) -> None:
                raise RuntimeError("a bug")

            got: list[tuple[bytes, float]] = []
            plane.register(bad, broken, errors.append)
            plane.register(good, drainer(good, got))
            bad_tx.send(b"boom")
            await wait_for(lambda: bool(errors))
            assert isinstance(errors[0], RuntimeError)
            assert plane.counters.handler_errors == 1
            assert len(plane) == 1
            good_tx.send(b"still here")
            bad_tx.send(b"ignored")  # no longer registered: not served, no second error
            await wait_for(lambda: bool(got))
            assert got[0][0] == b"still here"
            assert plane.counters.handler_errors == 1


async def test_registration_rules(in_c: bool) -> None:
    with udp_pair() as (rx, _tx):
        plane = MediaPlane(steady=in_c)
        plane.register(rx, lambda now: None)
        with pytest.raises(ValueError, match="already registered"):
            plane.register(rx, lambda now: None)
        plane.close()
        plane.close()
        assert plane.closed
        if in_c:  # a pass after the close would poll a descriptor number that may be reused
            with pytest.raises(ValueError, match="closed"):
                plane.serve_pass(0.0, [])
        plane.unregister(rx)  # harmless once closed
        plane.replace(rx, lambda now: None)  # as is a call's steady relay stopping late
        with pytest.raises(trio.ClosedResourceError):
            plane.register(rx, lambda now: None)


async def test_leaving_the_block_closes_the_plane(in_c: bool) -> None:
    async with open_media_plane(steady=in_c) as plane:
        assert not plane.closed
    assert plane.closed


async def test_packets_faster_than_coalesce_are_served_together_after_the_interval(in_c: bool) -> None:
    """Interrupt mitigation: the pass right after another one ends with a sleep of `coalesce`;
    every datagram that arrives meanwhile is served in the one pass after it (one `now`)."""
    coalesce = 0.5  # long: the test's own stalls on a loaded machine stay well below it
    with trio.fail_after(10), udp_pair() as (a, a_tx), udp_pair() as (b, b_tx), udp_pair() as (c, c_tx):
        async with open_media_plane(steady=in_c, coalesce=coalesce) as plane:
            got_a: list[tuple[bytes, float]] = []
            got_b: list[tuple[bytes, float]] = []
            got_c: list[tuple[bytes, float]] = []
            drain_a = drainer(a, got_a)

            def a_then_b(now: float) -> None:
                drain_a(now)
                b_tx.send(b"b0")  # ready for the pass right after this one: a busy plane

            plane.register(a, a_then_b)
            plane.register(b, drainer(b, got_b))
            plane.register(c, drainer(c, got_c))
            a_tx.send(b"a0")
            await wait_for(lambda: len(got_b) == 1)
            busy_pass = got_b[0][1]
            assert busy_pass - got_a[0][1] < coalesce
            for i in range(5):  # during the coalescing sleep
                c_tx.send(b"c%d" % i)
                a_tx.send(b"a%d" % (i + 1))
            await wait_for(lambda: len(got_c) == 5 and len(got_a) == 6)
            served_at = {now for _, now in got_c + got_a[1:]}
            assert len(served_at) == 1  # one pass for all ten
            assert served_at.pop() >= busy_pass + coalesce
            assert plane.counters.coalesced >= 1


async def test_no_coalescing_when_disabled(in_c: bool) -> None:
    with trio.fail_after(10), udp_pair() as (a, a_tx):
        async with open_media_plane(steady=in_c, coalesce=0) as plane:
            got: list[tuple[bytes, float]] = []
            plane.register(a, drainer(a, got, cap=1))
            for i in range(20):
                a_tx.send(b"%d" % i)
            await wait_for(lambda: len(got) == 20)
            assert plane.counters.coalesced == 0
    with pytest.raises(ValueError, match="coalesce"):
        MediaPlane(steady=in_c, coalesce=-1)


async def test_one_read_per_pass_then_a_drain_while_the_socket_keeps_a_backlog(in_c: bool) -> None:
    """The drain rule (rtp.plane): a handler reads one datagram per call; a socket served in the
    previous pass too gets up to DRAIN_CAP reads in this one."""
    from rtp.plane import DRAIN_CAP

    with trio.fail_after(10), udp_pair() as (rx, tx):
        reads: list[int] = []  # the pass of each successful read

        async with open_media_plane(steady=in_c, coalesce=0) as plane:

            def one(now: float) -> bool:
                try:
                    rx.recv(2048)
                except BlockingIOError:
                    return False
                reads.append(plane.counters.passes)
                return True

            total = 2 * DRAIN_CAP + 7
            for i in range(total):
                tx.send(b"%d" % i)
            plane.register(rx, one)
            await wait_for(lambda: len(reads) == total)
        per_pass = [reads.count(p) for p in sorted(set(reads))]
        assert per_pass == [1, DRAIN_CAP, DRAIN_CAP, 6]


async def test_a_busy_pass_that_resumes_late_is_counted(in_c: bool) -> None:
    """`late_*`: a busy pass that runs long (here a handler blocking 60 ms) resumes after its
    coalescing sleep's end; by how much is counted (the plane's share of the latency tail)."""
    with trio.fail_after(10), udp_pair() as (a, a_tx), udp_pair() as (b, b_tx):
        async with open_media_plane(steady=in_c, coalesce=0.001) as plane:
            got_a: list[tuple[bytes, float]] = []
            got_b: list[tuple[bytes, float]] = []
            drain_a, drain_b = drainer(a, got_a), drainer(b, got_b)

            def a_then_b(now: float) -> None:
                drain_a(now)
                b_tx.send(b"b0")  # ready for the pass right after this one: a busy plane

            def slow_b(now: float) -> None:
                drain_b(now)
                time.sleep(0.06)  # blocks the whole worker, as a long collection would

            plane.register(a, a_then_b)
            plane.register(b, slow_b)
            assert (plane.counters.late_2ms, plane.counters.late_50ms) == (0, 0)
            a_tx.send(b"a0")
            await wait_for(lambda: plane.counters.late_50ms >= 1)
            assert plane.counters.late_2ms >= plane.counters.late_10ms >= plane.counters.late_50ms >= 1


async def test_handlers_that_hold_the_plane_are_collected_with_it(in_c: bool) -> None:
    """A handler that refers to its plane (a call's bound methods do) makes a cycle through the
    C dispatcher's table: the garbage collector sees it (tp_traverse) and frees both."""
    import gc
    import weakref

    with udp_pair() as (rx, _tx):

        class Holding:
            def __init__(self, plane: MediaPlane) -> None:
                self.plane = plane

            def __call__(self, now: float) -> bool:
                return False

        plane = MediaPlane(steady=in_c)
        plane.register(rx, Holding(plane))
        ref = weakref.ref(plane)
        del plane
        gc.collect()
        assert ref() is None


async def test_the_coalescing_timer_fires_once_per_arm_and_forgets_what_fired_before() -> None:
    """rtp._steady.Dispatcher.arm: the plane's coalescing wait in C (a timer descriptor)."""
    import select

    from rtp import _steady

    with trio.fail_after(10):
        epoll = select.epoll()
        dispatcher = _steady.Dispatcher(epoll.fileno(), 4, 4)
        try:
            dispatcher.arm(0)  # at once
            await trio.lowlevel.wait_readable(dispatcher.timer_fd)
            start = trio.current_time()
            dispatcher.arm(0.05)  # the readiness of the previous arm is forgotten
            await trio.lowlevel.wait_readable(dispatcher.timer_fd)
            assert trio.current_time() - start >= 0.05  # never early: datagrams wait at most this
            dispatcher.arm(3600)
            readable = select.select([dispatcher.timer_fd], [], [], 0)[0]
            assert readable == []
        finally:
            trio.lowlevel.notify_closing(dispatcher.timer_fd)
            dispatcher.close()
            epoll.close()
        assert dispatcher.timer_fd == -1
        with pytest.raises(ValueError, match="closed"):
            dispatcher.arm(0.001)
