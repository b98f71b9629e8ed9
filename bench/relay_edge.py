"""Benchmark: the media edge's cost per datagram, sockets included, the plane and Trio left out.

One `rtp.media.MediaSession` on loopback sockets, keyed (SRTP AES-GCM, as browsers negotiate) and
latched, as in an established call. Its sockets are filled with a batch of datagrams from a sender,
then the edge's datagram readers drain them: the CPU time of that drain over the batch is the edge's
cost per datagram (receive, classify, source check, unprotect/protect, rewrite, reception
statistics, send). Three times: through the unconnected sockets (the connected twins kept off),
through the connected twins (the steady state of a call, `MediaSession._twin`) in Python, and
through the twins in C (`rtp._steady`, what the plane runs once both are up). The sender's and
the receiver's work stay outside the timed part. `bare` is the floor: recvfrom_into, the SRTP
call and sendto on unconnected sockets, nothing else.

Usage: .venv/bin/python bench/relay_edge.py [BATCH] [ROUNDS] [--calls N]
(default 200 datagrams x 200 rounds). Prints microseconds of CPU per datagram, best of the rounds'
medians over 3 repetitions. `--calls 500` also measures the twins' path interleaved over 500 calls
(each datagram to another call, as real traffic): what the per-call objects' cache misses add.
"""

from __future__ import annotations

import argparse
import resource
import socket
import statistics
import time
from collections.abc import Callable

import trio
from rtp import g711
from rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole
from rtp.ice_lite import IceLiteAgent
from rtp.media import STEADY_IN_C, MediaSession, SipRemote
from rtp.packet import RtpPacket
from rtp.plane import MediaPlane
from rtp.relay import CodecMap, PtRoute
from rtp.srtp import SrtpProfile, SrtpRx, SrtpTx, srtp_pair

PAYLOAD = g711.encode_ulaw(round(8000 * ((i % 20) - 10) / 10) for i in range(160))
SAME = CodecMap(to_sip={0: PtRoute(0)}, to_browser={0: PtRoute(0)})
PROFILE = SrtpProfile.AEAD_AES_128_GCM
BROWSER_KEY = bytes(range(PROFILE.key_length + PROFILE.salt_length))
OUR_KEY = bytes(range(50, 50 + PROFILE.key_length + PROFILE.salt_length))
CERT = DtlsCertificate.generate("bench-edge")


def _udp(*, reuse_port: bool = True) -> socket.socket:
    port = 0
    if reuse_port:  # a port nobody holds: bind(0) with SO_REUSEPORT may share another's
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if reuse_port:  # as rtp.ports binds: twins possible
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    return s


def _rtp(i: int) -> bytes:
    return RtpPacket(0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0x12345678, PAYLOAD).serialize()


def _drain(sock: socket.socket) -> int:
    n = 0
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return n
        n += 1


class Edge:
    """A keyed, latched MediaSession and its two peers (the browser's and the phone's sockets)."""

    def __init__(self, plane: MediaPlane | None = None, *, twins: bool = True, steady: bool = True) -> None:
        self.own_plane = plane is None
        self.plane = plane if plane is not None else MediaPlane(steady=steady)
        self.browser_port, self.sip_rtp, self.sip_rtcp = (_udp(reuse_port=twins) for _ in range(3))
        self.browser, self.phone = _udp(), _udp()
        self.media = MediaSession(
            browser_sock=self.browser_port,
            sip_rtp_sock=self.sip_rtp,
            sip_rtcp_sock=self.sip_rtcp,
            ice=IceLiteAgent("abcd", "p" * 24, "efgh", "q" * 24),
            dtls=DtlsEndpoint(DtlsRole.SERVER, CERT, ("sha-256", CERT.fingerprint_sha256)),
            plane=self.plane,
        )
        media = self.media
        media.relay.start_srtp(*srtp_pair(PROFILE, OUR_KEY, BROWSER_KEY))
        media._keyed = True
        browser_addr = self.browser.getsockname()
        media.ice._validated[browser_addr] = 0.0  # as after its connectivity check
        media._last_validated = browser_addr
        phone_addr = self.phone.getsockname()
        media.set_sip_remote(SipRemote(phone_addr, phone_addr, SAME))
        self.browser_tx = SrtpTx(PROFILE, BROWSER_KEY)
        self.browser_rx = SrtpRx(PROFILE, OUR_KEY)
        self.seq_to_sip = self.seq_to_browser = 0

    def fill_browser(self, n: int) -> None:
        dest = self.browser_port.getsockname()
        for _ in range(n):
            self.seq_to_sip += 1
            self.browser.sendto(self.browser_tx.protect(_rtp(self.seq_to_sip)), dest)

    def fill_phone(self, n: int) -> None:
        dest = self.sip_rtp.getsockname()
        for _ in range(n):
            self.seq_to_browser += 1
            self.phone.sendto(_rtp(self.seq_to_browser), dest)

    def close(self) -> None:
        self.media.close()
        if self.own_plane:
            self.plane.close()
        for s in (self.browser_port, self.sip_rtp, self.sip_rtcp, self.browser, self.phone):
            s.close()


def _timed(
    batch: int, rounds: int, fill: Callable[[int], None], serve: Callable[[], None], sink: socket.socket
) -> float:
    """Median CPU seconds per datagram of `serve()` draining a batch, over `rounds` batches."""
    per: list[float] = []
    for _ in range(rounds):
        fill(batch)
        start = time.process_time()
        serve()
        per.append((time.process_time() - start) / batch)
        if _drain(sink) != batch:
            raise AssertionError("the edge dropped datagrams")
    return statistics.median(per)


def _serve(one: Callable[[float], bool]) -> Callable[[], None]:
    def serve() -> None:
        while one(0.0):
            pass

    return serve


def _readers(media: MediaSession) -> tuple[Callable[[float], bool], Callable[[float], bool]]:
    """What the plane calls for the twins: the C relay's handlers once it exists, else Python's."""
    if media._steady is not None:
        if not media._steady.armed:
            raise AssertionError("the C relay is not armed")
        return media._steady.browser, media._steady.sip
    return media._browser_twin_datagram, media._sip_twin_datagram


def measure(batch: int, rounds: int) -> dict[str, float]:
    results: dict[str, float] = {}
    for twins, steady in ((False, False), (True, False), (True, True)):
        if steady and not STEADY_IN_C:
            continue
        edge = Edge(twins=twins, steady=steady)  # without SO_REUSEPORT on the call's ports, no twins
        media = edge.media
        try:
            edge.fill_browser(1)  # the first datagram each way: the source checks (and twins)
            edge.fill_phone(1)
            media._browser_datagram(0.0)
            media._sip_rtp_datagram(0.0)
            _drain(edge.phone)
            _drain(edge.browser)
            if twins and media.edge.twins != 2:
                raise AssertionError("the twins were not opened")
            browser_twin, sip_twin = _readers(media)
            serve_browser = _serve(browser_twin if twins else media._browser_datagram)
            serve_sip = _serve(sip_twin if twins else media._sip_rtp_datagram)

            label = ("connected twins, C" if steady else "connected twins") if twins else "unconnected"
            results[f"browser->SIP, {label}"] = _timed(
                batch, rounds, edge.fill_browser, serve_browser, edge.phone
            )
            results[f"SIP->browser, {label}"] = _timed(
                batch, rounds, edge.fill_phone, serve_sip, edge.browser
            )
        finally:
            edge.close()
    return {**results, **_bare(batch, rounds)}


def interleaved(calls: int, rounds: int, *, steady: bool) -> dict[str, float]:
    """`calls` keyed, latched calls with their twins on one plane; each round sends one datagram to
    every call, then serves them in turn: every packet meets another call's state (as real traffic
    does), so the per-call objects are no longer in the CPU's caches."""
    plane = MediaPlane(steady=steady, max_events=calls + 1)  # one pass serves every call
    edges = [Edge(plane) for _ in range(calls)]
    try:
        for edge in edges:
            for _ in range(3):  # the first datagrams each way open the twins
                if edge.media.edge.twins == 2:
                    break
                edge.fill_browser(1)
                edge.fill_phone(1)
                while edge.media._browser_datagram(0.0) or edge.media._sip_rtp_datagram(0.0):
                    pass
            _drain(edge.phone)
            _drain(edge.browser)
            if edge.media.edge.twins != 2:
                raise AssertionError("the twins were not opened")
        out: dict[str, float] = {}
        for label, fill, one, sink in (
            ("browser->SIP", Edge.fill_browser, 0, "phone"),
            ("SIP->browser", Edge.fill_phone, 1, "browser"),
        ):
            readers = [_readers(e.media)[one] for e in edges]
            per: list[float] = []
            for _ in range(rounds):
                for edge in edges:
                    fill(edge, 1)
                start = time.process_time()
                for read in readers:
                    read(0.0)
                per.append((time.process_time() - start) / calls)
                if sum(_drain(getattr(e, sink)) for e in edges) != calls:
                    raise AssertionError("the edge dropped datagrams")
            out[f"{label}, {calls} calls interleaved{', C' if steady else ''}"] = statistics.median(per)
        # Both directions at once, served by the plane's pass as in the bridge: the Python pass,
        # and with the C relay also the pass in C (rtp._steady.Dispatcher).
        passes = [("python pass", plane._serve_in_python)]
        if plane.passes_in_c:
            passes.append(("C pass", plane.serve_pass))
        for label, serve_pass in passes:
            failures: list[tuple[int, Callable[[float], bool | None], Exception]] = []
            per = []
            for _ in range(rounds):
                for edge in edges:
                    edge.fill_browser(1)
                    edge.fill_phone(1)
                start = time.process_time()
                while serve_pass(0.0, failures):
                    pass
                per.append((time.process_time() - start) / (2 * calls))
                if failures:
                    raise AssertionError(f"a handler failed: {failures[0][2]!r}")
                if (got := sum(_drain(e.phone) + _drain(e.browser) for e in edges)) != 2 * calls:
                    raise AssertionError(f"the plane relayed {got} of {2 * calls} datagrams")
            out[f"both ways, {calls} calls, {label}{', C relay' if steady else ''}"] = statistics.median(per)
        return out
    finally:
        for edge in edges:
            edge.close()
        plane.close()


def _bare(batch: int, rounds: int) -> dict[str, float]:
    """The floor: recvfrom_into + one SRTP call + sendto, nothing else."""
    rx_sock, tx_sock, sink, src = _udp(), _udp(), _udp(), _udp()
    tx, rx = srtp_pair(PROFILE, OUR_KEY, BROWSER_KEY)
    browser_tx = SrtpTx(PROFILE, BROWSER_KEY)
    buf = bytearray(2048)
    dest = sink.getsockname()
    seq = 0

    def fill_srtp(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq += 1
            src.sendto(browser_tx.protect(_rtp(seq)), rx_sock.getsockname())

    def fill_rtp(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            seq += 1
            src.sendto(_rtp(seq), tx_sock.getsockname())

    def unprotect_loop() -> None:
        view = memoryview(buf)
        while True:
            try:
                n, _src = rx_sock.recvfrom_into(buf)
            except BlockingIOError:
                return
            rx_sock.sendto(rx.unprotect(view[:n]), dest)

    def protect_loop() -> None:
        view = memoryview(buf)
        while True:
            try:
                n, _src = tx_sock.recvfrom_into(buf)
            except BlockingIOError:
                return
            tx_sock.sendto(tx.protect(view[:n]), dest)

    try:
        return {
            "bare unprotect": _timed(batch, rounds, fill_srtp, unprotect_loop, sink),
            "bare protect": _timed(batch, rounds, fill_rtp, protect_loop, sink),
        }
    finally:
        for s in (rx_sock, tx_sock, sink, src):
            s.close()


async def _main(batch: int, rounds: int, calls: int) -> list[dict[str, float]]:
    # In Trio: the plane closes through it.
    return [
        {
            **measure(batch, rounds),
            **{
                k: v
                for steady in ((False, True) if STEADY_IN_C else (False,))
                for k, v in (
                    interleaved(calls, max(20, 20_000 // calls), steady=steady) if calls else {}
                ).items()
            },
        }
        for _ in range(3)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("batch", nargs="?", type=int, default=200, help="datagrams per round (one call)")
    parser.add_argument("rounds", nargs="?", type=int, default=200)
    parser.add_argument("--calls", type=int, default=0, help="also interleave over this many calls")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 7 descriptors per call
    results = trio.run(_main, args.batch, args.rounds, args.calls)
    print(
        f"relay_edge: {args.batch} datagrams x {args.rounds} rounds, best of 3 medians, CPU us per datagram"
    )
    for key in results[0]:
        print(f"  {key:40s} {min(r[key] for r in results) * 1e6:6.2f}")


if __name__ == "__main__":
    main()
