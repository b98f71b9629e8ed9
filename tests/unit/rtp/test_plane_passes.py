"""The plane's pass in C (rtp._steady.Dispatcher) against the Python pass, its definition.

Two planes, each with its own copy of the same sockets, get the same datagrams in the same order;
every handler reads one datagram per call and, depending on the datagram, raises, unregisters
itself, replaces itself or reports nothing read. Pass after pass, both must read the same
datagrams from the same sockets, report the same number of ready sockets and the same failures:
the drain rule (one read, or up to DRAIN_CAP for a socket with a backlog or in a saturated pass),
handler changes during a pass, and exceptions handled alike. Synchronous: a pass needs no Trio.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtp.plane import MediaPlane

ACTIONS = {"read": b".", "raise": b"x", "unregister": b"u", "replace": b"r", "nothing": b"n"}
Log = list[tuple[int, int, bytes]]  # (pass, socket, datagram)
WEIGHTED = ["read", "read", "read", *ACTIONS]  # mostly plain reads
Serve = Callable[[float, list[tuple[int, object, Exception]]], int]  # MediaPlane.serve_pass


@contextmanager
def sockets(n: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    with ExitStack() as stack:
        pairs = []
        for _ in range(n):
            rx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            tx = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            rx.bind(("127.0.0.1", 0))
            rx.setblocking(False)
            tx.connect(rx.getsockname())
            pairs.append((rx, tx))
        yield pairs


class Script:
    """One plane's handlers; what they did goes to `log`."""

    def __init__(self, plane: MediaPlane, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
        self.plane, self.pairs = plane, pairs
        self.log: Log = []
        self.passes = 0
        for i, (rx, _tx) in enumerate(pairs):
            plane.register(rx, self.handler(i))

    def handler(self, i: int, *, replaced: bool = False) -> Callable[[float], bool]:
        rx = self.pairs[i][0]

        def handle(now: float) -> bool:
            try:
                data = rx.recv(64)
            except BlockingIOError:
                return False
            self.log.append((self.passes, i + (100 if replaced else 0), data))
            match data[:1]:
                case b"x":
                    raise RuntimeError(f"socket {i}")
                case b"u":
                    self.plane.unregister(rx)
                case b"r":
                    self.plane.replace(rx, self.handler(i, replaced=True))
                case b"n":
                    return False
            return True

        return handle

    def run_pass(self, serve: Serve) -> tuple[int, list[str]]:
        self.passes += 1
        failures: list[tuple[int, object, Exception]] = []
        ready = serve(0.0, failures)
        for fd, _handler, _exc in failures:
            self.plane.unregister(fd)
        index = {rx.fileno(): i for i, (rx, _tx) in enumerate(self.pairs)}
        return ready, sorted(f"{index[fd]}:{exc}" for fd, _h, exc in failures)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 6),
    max_events=st.integers(1, 8),
    rounds=st.lists(
        st.lists(
            st.tuples(st.integers(0, 5), st.sampled_from(WEIGHTED), st.integers(1, 20)),
            max_size=8,
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_the_pass_in_c_does_what_the_python_pass_does(
    n: int, max_events: int, rounds: list[list[tuple[int, str, int]]]
) -> None:
    python_plane = MediaPlane(steady=False, max_events=max_events)
    c_plane = MediaPlane(steady=True, max_events=max_events)
    assert c_plane.passes_in_c
    assert not python_plane.passes_in_c
    with sockets(n) as python_pairs, sockets(n) as c_pairs:
        python_script, c_script = Script(python_plane, python_pairs), Script(c_plane, c_pairs)
        seq = 0
        for sends in rounds:
            for target, action, count in sends:
                for _ in range(count if action == "read" else 1):
                    seq += 1
                    datagram = ACTIONS[action] + b"%d" % seq
                    for pairs in (python_pairs, c_pairs):
                        pairs[target % n][1].send(datagram)
            for _ in range(8):  # passes until both are idle (or not: the rest carries over)
                python_result = python_script.run_pass(python_plane.serve_pass)
                c_result = c_script.run_pass(c_plane.serve_pass)
                assert c_result == python_result
                assert sorted(c_script.log) == sorted(python_script.log)
                if python_result[0] == 0:
                    break
            assert len(c_plane) == len(python_plane)
    for plane in (python_plane, c_plane):
        plane._epoll.close()
