"""The media port allocator (Trio edge): UDP sockets bound in the configured port range.

Each call leases one socket towards the browser (ICE, DTLS, SRTP and SRTCP share it: rtcp-mux)
and an RTP/RTCP pair towards the SIP side (RTP on an even port, RTCP on the next odd one,
RFC 3550 §11). Leases are async context managers: the socket is bound on entry, closed and its
port returned to the pool on exit, whatever ends the call.

* Ports held by another process (EADDRINUSE, EACCES) are skipped, not fatal.
* When the range has nothing left, `PortsExhausted` is raised (the bridge answers 503); no other
  exception comes out of an allocation except an `OSError` that is not about a busy port (the
  configured host is not an address of this machine, say), which is a configuration error.
* The scan resumes after the port last handed out (round robin), so a port just released is not
  reused at once: stray packets of the previous call then land on a closed port, not a new call.
* Sockets are bound with SO_REUSEPORT, so that a call can add connected twins on the same port
  (rtp.media); a port is still only taken when a probe without the option can bind it.
* Every socket gets large kernel buffers (4 MiB asked, the kernel caps at net.core.*mem_max; see
  shared/recipes/perf: the default 212 KB buffer holds only 256 packets and loses bursts).
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio
from rtp.errors import PortsExhausted

__all__ = ["SOCKET_BUFFER_BYTES", "PortAllocator", "PortsExhausted"]

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
_BUSY = (errno.EADDRINUSE, errno.EACCES)


def _is_numeric(host: str) -> bool:
    if "%" in host:  # a scoped IPv6 address: the resolver gives its scope id
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class PortAllocator:
    """Hands out UDP sockets bound to `host` on ports `low`..`high` (inclusive).

    One allocator is shared by all calls of a bridge process; it is not thread-safe but is safe
    for any number of Trio tasks (a port is reserved before the first checkpoint).
    """

    def __init__(
        self, low: int, high: int, host: str = "127.0.0.1", *, buffer_bytes: int = SOCKET_BUFFER_BYTES
    ):
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"port range {low}-{high} invalid")
        self.low, self.high, self.host = low, high, host
        self.buffer_bytes = buffer_bytes
        self._family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        # The numeric socket address bound to, less the port: `host` itself when it is a plain
        # numeric address, else what the resolver gives once (an IPv6 scope id, a name).
        self._address: tuple[str | int, ...] | None = (host,) if _is_numeric(host) else None
        self._in_use: set[int] = set()
        self._cursor = low
        self.skipped_busy = 0  # ports found held by another process, over the allocator's life

    @property
    def in_use(self) -> frozenset[int]:
        """The ports currently leased by this allocator."""
        return frozenset(self._in_use)

    def _candidates(self, *, even: bool) -> Iterator[int]:
        """Every port to try once, starting at the round-robin cursor (lazily: a list of the whole
        range cost about 1 ms per call, while the first candidate is nearly always free)."""
        ordered = itertools.chain(range(self._cursor, self.high + 1), range(self.low, self._cursor))
        if even:
            return (p for p in ordered if p % 2 == 0 and p + 1 <= self.high)
        return ordered

    def _tune(self, sock: socket.socket) -> None:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            size = self.buffer_bytes
            while size >= 65536:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, size)
                    break
                except OSError:
                    size //= 2  # fall back: some systems refuse rather than cap

    async def _numeric_address(self) -> tuple[str | int, ...]:
        if self._address is None:
            infos = await trio.socket.getaddrinfo(self.host, 0, self._family, trio.socket.SOCK_DGRAM)
            if not infos:
                raise OSError(errno.EADDRNOTAVAIL, f"cannot resolve {self.host!r}")
            sockaddr = infos[0][4]
            self._address = (sockaddr[0], *sockaddr[2:])  # without the port
        return self._address

    async def _bind(self, port: int) -> trio.socket.SocketType | None:
        """A socket bound to `port`, or None if another process holds it. The port must be reserved.

        Bound synchronously to the numeric address (a UDP bind does not block): Trio's own
        `bind` resolved the address again for every socket, a third of an allocation's cost.
        """
        address = self._address if self._address is not None else await self._numeric_address()
        sockaddr = (address[0], port, *address[1:])
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            # SO_REUSEPORT lets the call bind connected twins to the port (rtp.media); a probe
            # without it first, so that a port any other socket holds (even one of this user's
            # with SO_REUSEPORT) counts as busy, as without the option.
            with socket.socket(self._family, socket.SOCK_DGRAM) as probe:
                probe.bind(sockaddr)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self._tune(sock)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            if exc.errno in _BUSY:
                self.skipped_busy += 1
                return None
            raise
        except BaseException:
            sock.close()
            raise
        return trio.socket.from_stdlib_socket(sock)

    def _release(self, *ports: int) -> None:
        for port in ports:
            self._in_use.discard(port)

    async def _allocate_one(self) -> tuple[int, trio.socket.SocketType]:
        for port in self._candidates(even=False):
            if port in self._in_use:
                continue
            self._in_use.add(port)
            try:
                sock = await self._bind(port)
            except BaseException:
                self._release(port)
                raise
            if sock is None:
                self._release(port)
                continue
            self._cursor = port + 1 if port < self.high else self.low
            return port, sock
        raise PortsExhausted(f"no free UDP port in {self.low}-{self.high} on {self.host}")

    async def _allocate_pair(self) -> tuple[int, trio.socket.SocketType, trio.socket.SocketType]:
        for port in self._candidates(even=True):
            if port in self._in_use or port + 1 in self._in_use:
                continue
            self._in_use.update((port, port + 1))
            rtp: trio.socket.SocketType | None = None
            try:
                rtp = await self._bind(port)
                rtcp = await self._bind(port + 1) if rtp is not None else None
            except BaseException:
                if rtp is not None:
                    rtp.close()
                self._release(port, port + 1)
                raise
            if rtp is None or rtcp is None:
                if rtp is not None:
                    rtp.close()
                self._release(port, port + 1)
                continue
            self._cursor = port + 2 if port + 2 <= self.high else self.low
            return port, rtp, rtcp
        raise PortsExhausted(f"no free even/odd UDP port pair in {self.low}-{self.high} on {self.host}")

    @asynccontextmanager
    async def udp(self) -> AsyncIterator[trio.socket.SocketType]:
        """Lease one bound UDP socket (the browser leg). Raises `PortsExhausted`."""
        port, sock = await self._allocate_one()
        try:
            with sock:
                yield sock
        finally:
            self._release(port)

    @asynccontextmanager
    async def udp_pair(self) -> AsyncIterator[tuple[trio.socket.SocketType, trio.socket.SocketType]]:
        """Lease an (RTP, RTCP) pair on an even port and the next one (RFC 3550 §11).

        Raises `PortsExhausted`.
        """
        port, rtp, rtcp = await self._allocate_pair()
        try:
            with rtp, rtcp:
                yield rtp, rtcp
        finally:
            self._release(port, port + 1)
