"""One UDP port for the browser legs of every call of a worker: the single-port mode (Trio edge).

By default each call leases its own browser-facing port (`rtp.ports`). With `rtp_browser_port`
set, worker I of N serves the browser legs of all its calls on ONE port, `rtp_browser_port + I`
(what WebRTC SFUs call a single-port or "WebRtcServer" mode: one firewall rule, whatever the
number of calls). docs/media-ports.md describes both modes for operators.

How a datagram finds its call
-----------------------------
`SharedBrowserPort` owns one unconnected, non-blocking UDP socket, bound with SO_REUSEPORT and
served by the worker's `rtp.plane.MediaPlane` (one handler call reads up to `READS_PER_CALL`
datagrams, where a call's own port reads one: this socket carries every call's signalling, and
what strangers send). `PortRoutes`, the pure table behind it, picks the call:

    first byte (RFC 7983)     routed by                                  no match
    0..3     STUN             the USERNAME's first part: our ufrag       dropped, counted
                              (RFC 8445 7.2.2; rtp.stun.local_ufrag_untrusted)
    anything else             the source address, to the call for which  dropped, counted
    (DTLS, SRTP, SRTCP)       that address passed an ICE check (RFC 8445
                              7.3); the latest successful check wins

A check for a ufrag reserved by a call whose `run_ice_dtls` has not attached it yet is held (a
few per call, copied) and handed over at `attach`: on a port of its own, the call would find it
queued in the kernel when it starts serving the port, and the browser's first check is not lost.

The call's own `MediaSession` then handles the datagram exactly as on a port of its own (it
authenticates the check, answers it, feeds DTLS, relays SRTP) and tells the table when a check
from an address succeeded (`validated`). A session is attached (by its ufrag) while its
`run_ice_dtls` runs, and its addresses are removed when it detaches; its ufrag is reserved from
`open_media` to the session's `close()` (which leaves no entry), so no two live calls of the
worker share one.

The steady stream, on Linux 6.13 and later, does not come here: once the browser's nominated
address sends media, the call opens a connected twin socket on this same port (rtp.media `_twin`),
and the kernel gives a connected socket the datagrams of its exact 4-tuple, found by a hash of it.
So the cost per relayed packet is the per-call mode's (measured). Older kernels have no such hash:
every datagram's lookup would walk all the sockets bound to the port (~10 us per 1,000 calls,
docs/media-ports.md). There (`twins` False) this socket carries everything and is read in C
(`rtp._steady.SharedDemux`, up to READS_PER_CALL per call): a call's nominated browser address,
once the call's C relay exists (rtp.media `_steady_start`), is routed straight to that relay
(`SteadyRelay` with `browser_dest`: it sends to the browser from this socket), and only the rest
comes to the Python routing here. Without the C relay, twins on any kernel (and a warning at start
on old ones). With twins, datagrams that match none (ICE set-up, strangers) walk the port's sockets.
"""

from __future__ import annotations

import logging
import platform
import re
import socket
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import trio
from rtp.plane import MediaPlane
from rtp.ports import SOCKET_BUFFER_BYTES
from rtp.stun import Address, local_ufrag_untrusted

try:  # the reader without twins in C (src/rtp/_steady.c), built where a compiler is
    from rtp import _steady
except ImportError:  # pragma: no cover - the wheel without its extension
    _steady = None  # type: ignore[assignment]

__all__ = [
    "BrowserLeg",
    "PortRoutes",
    "SharedBrowserPort",
    "SharedPortCounters",
    "kernel_hashes_connected_udp",
]

log = logging.getLogger(__name__)

HELD_PER_CALL = 4  # checks held for a call not attached yet (a browser's first few, ~100 bytes each)
# Datagrams read per handler call. The plane reads a socket at most DRAIN_CAP (16) times a pass, which
# suits a call's own socket; this one carries the signalling of every call of the worker and whatever
# strangers send it. At 16 x 1 datagrams per pass (~1,000 passes/s) a flood of 40,000 junk datagrams/s
# outran the reads: the kernel dropped 60 % of the port's datagrams, honest checks as often as junk,
# and a new call connected only after the flood (tests/hostile/test_hostile_shared_port.py).
READS_PER_CALL = 16

# Linux 6.13 added a 4-tuple hash for connected UDP sockets ("udp: Add 4-tuple hash for
# connected sockets"); before it, a datagram's socket lookup scans the port's whole chain.
HASHED_SINCE = (6, 13)


def kernel_hashes_connected_udp(release: str) -> bool:
    """True if the Linux kernel `release` (`platform.release()`, e.g. "6.18.4-amd64") finds a
    connected UDP socket by a hash of its 4-tuple (6.13+); False if older or unreadable."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return match is not None and (int(match[1]), int(match[2])) >= HASHED_SINCE


@dataclass(slots=True)
class SharedPortCounters:
    """What the shared port dropped, each datagram in at most one field (`datagrams`: all read)."""

    datagrams: int = 0
    stun_no_ufrag: int = 0  # STUN without a readable USERNAME "ufrag:..." (or not STUN at all)
    unknown_ufrag: int = 0  # STUN for a ufrag no live call of the worker has
    held: int = 0  # ...for a call not attached yet: held for it (HELD_PER_CALL at most, then dropped)
    unknown_address: int = 0  # DTLS/SRTP/other from an address no call validated
    leg_errors: int = 0  # a call's handler raised (a bug): that call ends, the others go on
    # Not read by this port: datagrams of others a new twin found queued (rtp.media `_drop_strays`).
    twin_strays: int = 0
    # Not in `datagrams`: read and handed straight to a call's C relay by the C reader (no twins).
    routed_in_c: int = 0


class BrowserLeg(Protocol):
    """What the shared port needs from a call (rtp.media.MediaSession)."""

    def serve_shared(self, n: int, src: Address, now: float) -> None:
        """Handle the datagram of `n` bytes at the start of the plane's buffer, from `src`."""

    def shared_failed(self, exc: BaseException) -> None:
        """`serve_shared` raised: the call is detached and must end."""


L = TypeVar("L")


class PortRoutes(Generic[L]):
    """The routing table of a shared port (pure): ufrags and validated addresses -> legs.

    A ufrag is `reserve`d (None: no leg yet; checks for it are held), then `attach`ed to its leg,
    which gets the held checks; `validated` maps a source address to an attached leg (the latest
    call wins); `detach` removes the leg's ufrag binding and all its addresses, `release` the
    ufrag itself.
    """

    __slots__ = ("_addresses", "_by_address", "_held", "_ufrags", "counters")

    def __init__(self) -> None:
        self.counters = SharedPortCounters()
        self._ufrags: dict[str, L | None] = {}
        self._held: dict[str, list[tuple[bytes, Address]]] = {}  # reserved ufrag -> checks held
        self._by_address: dict[Address, L] = {}
        self._addresses: dict[L, tuple[str, set[Address]]] = {}  # attached leg -> (ufrag, addresses)

    def __len__(self) -> int:
        """Entries held: ufrags (reserved or attached), routed addresses, held checks."""
        return len(self._ufrags) + len(self._by_address) + sum(map(len, self._held.values()))

    def reserve(self, ufrag: str) -> bool:
        """Hold `ufrag` for a call being set up; False if a live call already has it."""
        if ufrag in self._ufrags:
            return False
        self._ufrags[ufrag] = None
        return True

    def release(self, ufrag: str) -> None:
        """The call with `ufrag` is over (its leg detached first, or detached here)."""
        leg = self._ufrags.pop(ufrag, None)
        self._held.pop(ufrag, None)
        if leg is not None:
            self._forget(leg)

    def attach(self, ufrag: str, leg: L) -> list[tuple[bytes, Address]]:
        """Route checks for `ufrag` to `leg` (the ufrag reserved or free; LookupError if another
        leg has it); returns the checks held for it meanwhile (datagram, source), oldest first."""
        owner = self._ufrags.get(ufrag)
        if owner is not None and owner is not leg:
            raise LookupError(f"ICE ufrag {ufrag!r} is attached to another call")
        self._ufrags[ufrag] = leg
        self._addresses.setdefault(leg, (ufrag, set()))
        return self._held.pop(ufrag, [])

    def leg_at(self, src: Address) -> L | None:
        """The leg `src` is routed to, if any."""
        return self._by_address.get(src)

    def detach(self, leg: L) -> None:
        """Route nothing to `leg` any more; its ufrag stays reserved until `release`. Idempotent."""
        entry = self._addresses.get(leg)
        if entry is not None and self._ufrags.get(entry[0]) is leg:
            self._ufrags[entry[0]] = None
        self._forget(leg)

    def _forget(self, leg: L) -> None:
        entry = self._addresses.pop(leg, None)
        if entry is None:
            return
        for address in entry[1]:
            if self._by_address.get(address) is leg:
                del self._by_address[address]

    def validated(self, src: Address, leg: L) -> None:
        """A check from `src` to `leg` succeeded: DTLS and media from `src` go to `leg` (RFC 8445
        7.3: the check is what makes the address the call's); nothing if `leg` is not attached."""
        entry = self._addresses.get(leg)
        if entry is None:
            return
        owner = self._by_address.get(src)
        if owner is leg:
            return
        if owner is not None:
            self._addresses[owner][1].discard(src)
        self._by_address[src] = leg
        entry[1].add(src)

    def route_untrusted(self, data: bytes | bytearray | memoryview, src: Address) -> L | None:
        """The leg a datagram from `src` goes to, or None (dropped; counted in `counters`)."""
        counters = self.counters
        counters.datagrams += 1
        if len(data) and data[0] < 4:  # STUN (RFC 7983)
            ufrag = local_ufrag_untrusted(data)
            if ufrag is None:
                counters.stun_no_ufrag += 1
                return None
            leg = self._ufrags.get(ufrag)
            if leg is None:
                if ufrag not in self._ufrags:
                    counters.unknown_ufrag += 1
                    return None
                held = self._held.setdefault(ufrag, [])
                if len(held) < HELD_PER_CALL:
                    held.append((bytes(data), src))
                    counters.held += 1
                else:
                    counters.unknown_ufrag += 1
            return leg
        leg = self._by_address.get(src)
        if leg is None:
            counters.unknown_address += 1
        return leg


def _address(raw: Any) -> Address:
    # IPv6 sources come as (host, port, flowinfo, scope_id); the sessions key on (host, port).
    return (str(raw[0]), int(raw[1]))


class SharedBrowserPort:
    """The worker's one browser-facing UDP socket, served by `plane` (module docstring).

    Binds `host`:`port` at once (OSError if another socket holds it; a probe without
    SO_REUSEPORT first, so that a port held by anyone counts as busy) and registers with the
    running `plane`. Calls use `socket` to send, and bind their twins beside it; they never
    close it. `close()` (or leaving the `with` block) unregisters and closes it.
    """

    def __init__(
        self,
        plane: MediaPlane,
        host: str,
        port: int,
        *,
        buffer_bytes: int = SOCKET_BUFFER_BYTES,
        twins: bool | None = None,
    ) -> None:
        # Connected twins on this port for the calls' steady streams where the kernel finds them by
        # a hash (or the relay is not in C), else this socket for every datagram, read in C.
        if twins is None:
            twins = _steady is None or not plane.steady or kernel_hashes_connected_udp(platform.release())
        self.twins = twins
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, port))
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the calls' twins (rtp.media)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                size = buffer_bytes
                while size >= 65536:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, option, size)
                        break
                    except OSError:
                        size //= 2
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self.routes: PortRoutes[BrowserLeg] = PortRoutes()
        self.failure: BaseException | None = None  # set if the port's own handler raised (a bug)
        self._plane = plane
        self._pkt = plane.buffer
        self._buf = self._pkt.data
        self._view = self._pkt.view
        self._closed = False
        # Without twins, the calls' steady streams come here: a C reader hands a routed address's
        # datagrams to its call's C relay and the rest to `_routed` (rtp._steady.SharedDemux).
        self._demux: _steady.SharedDemux | None = None
        if not self.twins and _steady is not None and plane.steady:
            self._demux = _steady.SharedDemux(
                sock.fileno(), self._buf, self._routed, self._relay_failed, READS_PER_CALL
            )
        try:
            plane.register(sock, self._demux or self._datagram, self._on_error)
        except BaseException:
            sock.close()
            raise

    def __enter__(self) -> SharedBrowserPort:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def counters(self) -> SharedPortCounters:
        counters = self.routes.counters
        if self._demux is not None:
            counters.routed_in_c = self._demux.counts[0]
        return counters

    @property
    def closed(self) -> bool:
        return self._closed

    # The calls' side (rtp.media), all synchronous.

    def reserve(self, ufrag: str) -> bool:
        return self.routes.reserve(ufrag)

    def release(self, ufrag: str) -> None:
        self.routes.release(ufrag)

    def attach(self, ufrag: str, leg: BrowserLeg) -> None:
        """Route `ufrag`'s checks to `leg`; `trio.ClosedResourceError` once the port is closed."""
        if self._closed:
            raise trio.ClosedResourceError("the shared browser port is closed")
        held = self.routes.attach(ufrag, leg)
        if held:
            now = trio.current_time()
            for data, src in held:  # outside a plane pass: the shared buffer is free
                n = len(data)
                self._view[:n] = data
                if not self._serve(leg, n, src, now):
                    break

    def detach(self, leg: BrowserLeg) -> None:
        self.routes.detach(leg)

    def validated(self, src: Address, leg: BrowserLeg) -> None:
        self.routes.validated(src, leg)

    def route_steady(self, peer: Address, relay: _steady.SteadyRelay) -> None:
        """Without twins: `peer`'s datagrams go straight to a call's C relay (if C reads this port)."""
        if self._demux is not None:
            with suppress(ValueError):  # an address C does not parse (an IPv6 zone): the Python route
                self._demux.route(peer, relay)

    def unroute_steady(self, peer: Address, relay: _steady.SteadyRelay) -> None:
        """Undo `route_steady` (if that route is still `relay`'s)."""
        if self._demux is not None:
            with suppress(ValueError):
                self._demux.unroute(peer, relay)

    def close(self) -> None:
        """Stop serving and close the socket (calls still alive then count failed sends). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._plane.unregister(self.socket)  # before close: the epoll keys on the open file
        self.socket.close()

    # The plane's side.

    def _routed(self, n: int, src: Address, now: float) -> None:
        """A datagram the C reader read from an address it has no route for (in the buffer)."""
        leg = self.routes.route_untrusted(self._view[:n], src)
        if leg is not None:
            self._serve(leg, n, src, now)

    def _relay_failed(self, src: Address, exc: BaseException) -> None:
        """A call's C relay, on a routed datagram, ran its Python handler, which raised (a bug)."""
        leg = self.routes.leg_at(src)
        self.routes.counters.leg_errors += 1
        log.error("browser media handler of a call failed; the call is detached", exc_info=exc)
        if leg is not None:
            self.routes.detach(leg)
            leg.shared_failed(exc)

    def _datagram(self, now: float) -> bool:
        """Up to READS_PER_CALL datagrams from the shared socket, each handed to its call before
        the next is read (one buffer); False if there was none."""
        sock, buf, view, routes = self.socket, self._buf, self._view, self.routes
        for i in range(READS_PER_CALL):
            try:
                n, src = sock.recvfrom_into(buf)
            except OSError:  # BlockingIOError, or e.g. ECONNREFUSED queued by an ICMP error
                return i > 0
            if len(src) != 2:
                src = _address(src)
            leg = routes.route_untrusted(view[:n], src)
            if leg is not None:
                self._serve(leg, n, src, now)
            if self._closed:
                break
        return True

    def _serve(self, leg: BrowserLeg, n: int, src: Address, now: float) -> bool:
        """`leg` handles the datagram in the buffer; False if it raised (then detached and told)."""
        try:
            leg.serve_shared(n, src, now)
        except Exception as exc:  # a bug in one call's handler: that call only
            self.routes.counters.leg_errors += 1
            log.error("browser media handler of a call failed; the call is detached", exc_info=exc)
            self.routes.detach(leg)
            leg.shared_failed(exc)
            return False
        return True

    def _on_error(self, exc: BaseException) -> None:
        # Our own handler raised (a bug): the plane unregistered it; the calls' checks go unanswered.
        self.failure = exc
        log.critical("the shared browser port %d stopped serving", self.port, exc_info=exc)
