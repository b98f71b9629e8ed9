"""SIP over UDP, TCP and TLS on Trio (RFC 3261 §18, §26.2, RFC 3581): the sockets and nothing else.

Theory of operation:

* `SipTransport.run()` binds one UDP socket and one TCP listener on the same port (`port=0` picks a
  free one), reports itself through `task_status`, and owns every socket for its whole life: one
  reader task per socket, all in the transport's nursery. Closing = cancelling `run()`.
* Inbound bytes are parsed with the core's `_untrusted` parsers. A bad datagram is dropped and
  counted; a bad message on a TCP stream is answered 400 when its head can be read, and the
  connection is closed (the stream is out of sync after a framing error). Every parsed message goes
  to `inbound` (a bounded channel: signalling uses backpressure) as an `Inbound(message, source)`.
* RFC 3581 §4 / RFC 3261 §18.2.1: a request's top Via gets `received=` when the sent-by host is not
  the source address, and `rport=` filled with the source port when the client asked for it, so
  that the responses built from that Via go back where the request really came from
  (`response_address()`).
* `send(data, dest)` sends to (host, port, transport). TCP connections are reused per destination
  (inbound ones too: a response goes back over the connection its request arrived on, §18.2.2),
  written under one lock each, and closed after `tcp_idle_timeout` without traffic.
  Failures raise `TransportError`, which a UA maps to 503 (RFC 3261 §8.1.3.1).
* Caps on inbound TCP/TLS connections (RFC 3261 §26.1 leaves denial of service to the
  implementation; Asterisk's `tcpauthlimit`/`tcpauthtimeout` are the model): at most
  `max_tcp_connections` connections in all (ours included) and `max_tcp_per_address` accepted from
  one source IP; one over a cap is closed at once (counted, the first logged). A message must be
  complete (head and body) within `tcp_head_timeout` of its first byte, and an accepted connection
  must deliver its first message within `tcp_head_timeout` of the accept (TLS handshake included):
  a trickled head or a silent connection no longer holds a descriptor for `tcp_idle_timeout`,
  which every received byte restarts.
* ICMP errors for our datagrams (RFC 3261 §18.4): the UDP socket has IP_RECVERR / IPV6_RECVERR
  (Linux), so an ICMP error is queued with the destination of the datagram that caused it. The
  reader drains that queue when the socket reports the error and sends `Unreachable(dest)` on
  `unreachable` for host, network, port or protocol unreachable and parameter problems (the UA
  fails the client transactions waiting on that destination at once instead of by Timer B/F);
  source quench and TTL exceeded are ignored, as §18.4 says. Where the option does not exist the
  error is only logged and Timer B/F ends the transaction.
* `public_host`/`public_port` (what goes into Via sent-by and Contact) are separate from the bind
  address, for a bridge behind a static NAT or bound to the wildcard.
* TLS (optional): with `tls_server_context` a TLS listener runs on `tls_port` (0 = any free port);
  with `tls_client_context` connections to `Transport.TLS` destinations are made over TLS (the
  server name is the destination host, §26.3.1). TLS connections are framed, reused and
  idle-closed like TCP ones; connections are keyed by (host, port, transport).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import math
import os
import socket
import ssl
import struct
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from enum import Enum
from typing import Self

import trio
from sip.errors import SipParseError
from sip.message import Request, Response, error_response
from sip.parser import BadMessage, KeepAlive, StreamParser, parse_datagram_untrusted

__all__ = [
    "Address",
    "Inbound",
    "SipTransport",
    "Transport",
    "TransportError",
    "TransportStats",
    "Unreachable",
]

log = logging.getLogger("sip.transport")

MAX_DATAGRAM = 65535
DEFAULT_RCVBUF = 4 * 1024 * 1024

# Linux <linux/in.h>, <linux/in6.h>, <linux/errqueue.h> (the socket module lacks them).
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, 11), socket.AF_INET6: (socket.IPPROTO_IPV6, 25)}
_EE_ORIGIN_ICMP, _EE_ORIGIN_ICMP6 = 2, 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ...
# The socket errors a queued ICMP error surfaces as on recvfrom/sendto.
_ICMP_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPROTO, errno.ENOPROTOOPT,
     errno.EACCES, errno.EHOSTDOWN, errno.ENONET, errno.EMSGSIZE}
)  # fmt: skip


class Transport(Enum):
    """The transports of a SIP hop (the Via transport token)."""

    UDP = "UDP"
    TCP = "TCP"
    TLS = "TLS"

    @property
    def reliable(self) -> bool:
        """TCP and TLS are reliable (no retransmissions, §17.1.1.2)."""
        return self is not Transport.UDP

    @classmethod
    def from_token(cls, token: str) -> Transport:
        """`udp`/`UDP` -> Transport.UDP; raises ValueError for anything we do not speak."""
        try:
            return cls(token.upper())
        except ValueError:
            raise ValueError(f"unsupported SIP transport {token!r}") from None


@dataclass(frozen=True, slots=True)
class Address:
    """Where a message came from or goes to: an IP literal or host name, a port, a transport."""

    host: str
    port: int
    transport: Transport = Transport.UDP

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport.value.lower()}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Inbound:
    """A parsed message and the address it came from."""

    message: Request | Response
    source: Address


class TransportError(Exception):
    """A message could not be sent (unresolvable host, refused or broken connection)."""


@dataclass(frozen=True, slots=True)
class Unreachable:
    """An ICMP error came back for a datagram we sent to `dest` (RFC 3261 §18.4)."""

    dest: Address
    reason: str


def icmp_unreachable(origin: int, icmp_type: int, icmp_code: int) -> bool:
    """RFC 3261 §18.4: host, network, port or protocol unreachable and parameter problem errors
    SHOULD be reported to the transport user; source quench and TTL exceeded SHOULD be ignored
    (as is "fragmentation needed", a path MTU signal)."""
    if origin == _EE_ORIGIN_ICMP:  # RFC 792: 3 destination unreachable (4 = frag needed), 12
        return (icmp_type == 3 and icmp_code != 4) or icmp_type == 12
    if origin == _EE_ORIGIN_ICMP6:  # RFC 4443: 1 destination unreachable, 4 parameter problem
        return icmp_type in (1, 4)
    return False


@dataclass(slots=True)
class TransportStats:
    """Counters, for metrics and tests."""

    received: int = 0
    sent: int = 0
    bad_datagrams: int = 0
    bad_stream_messages: int = 0
    keepalives: int = 0
    send_errors: int = 0
    tcp_accepted: int = 0
    tcp_connected: int = 0
    tcp_closed: int = 0
    tcp_refused: int = 0  # over max_tcp_connections
    tcp_refused_per_address: int = 0  # over max_tcp_per_address
    tcp_head_timeouts: int = 0  # a message (or the first one) not complete within tcp_head_timeout
    tls_failures: int = 0
    icmp_errors: int = 0


@dataclass(slots=True, eq=False)
class _Conn:
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    peer: Address
    last_used: float
    lock: trio.StrictFIFOLock = field(default_factory=trio.StrictFIFOLock)
    closed: bool = False
    inbound: bool = False  # accepted (counted per source IP), not opened by us


class SipTransport:
    """UDP + TCP SIP transport bound to `bind_host:port`; see the module docstring.

    Use::

        transport = SipTransport("127.0.0.1", 0)
        await nursery.start(transport.run)      # bound; transport.port is the real port
        await transport.send(data, Address("127.0.0.1", 5070))
        async for inbound in transport.inbound: ...
    """

    def __init__(
        self,
        bind_host: str = "127.0.0.1",
        port: int = 5060,
        *,
        public_host: str | None = None,
        public_port: int | None = None,
        udp: bool = True,
        tcp: bool = True,
        rcvbuf: int = DEFAULT_RCVBUF,
        tcp_idle_timeout: float = 120.0,
        connect_timeout: float = 5.0,
        max_tcp_connections: int = 512,
        max_tcp_per_address: int = 64,
        tcp_head_timeout: float = 30.0,
        inbound_queue: int = 256,
        tls_server_context: ssl.SSLContext | None = None,
        tls_client_context: ssl.SSLContext | None = None,
        tls_port: int | None = None,
        public_tls_port: int | None = None,
    ) -> None:
        if not (udp or tcp):
            raise ValueError("a SIP transport needs UDP or TCP")
        self.bind_host = bind_host
        self.port = port
        self.public_host = public_host or bind_host
        self._public_port = public_port
        self.udp_enabled, self.tcp_enabled = udp, tcp
        self.rcvbuf = rcvbuf
        self.tcp_idle_timeout = tcp_idle_timeout
        self.connect_timeout = connect_timeout
        self.max_tcp_connections = max_tcp_connections
        self.max_tcp_per_address = max_tcp_per_address
        self.tcp_head_timeout = tcp_head_timeout
        self._per_address: dict[str, int] = {}  # source IP -> accepted connections open
        self._cap_logged: set[str] = set()  # which caps were logged (each once)
        self.stats = TransportStats()
        self._send_inbound, self.inbound = trio.open_memory_channel[Inbound](inbound_queue)
        self._udp: trio.socket.SocketType | None = None
        self._udp_errqueue: socket.socket | None = None  # a non-blocking dup of _udp (MSG_ERRQUEUE)
        self._send_unreachable, self.unreachable = trio.open_memory_channel[Unreachable](64)
        self._listener: trio.SocketListener | None = None
        self._conns: dict[tuple[str, int, Transport], _Conn] = {}
        self._connecting: dict[tuple[str, int, Transport], trio.Event] = {}
        self.tls_server_context = tls_server_context
        self.tls_client_context = tls_client_context
        self.tls_port = tls_port if tls_port is not None else (port + 1 if port else 0)
        self._public_tls_port = public_tls_port
        self._tls_listener: trio.SocketListener | None = None
        self._nursery: trio.Nursery | None = None
        self._family = trio.socket.AF_INET6 if ":" in bind_host else trio.socket.AF_INET
        # Tests may hook outgoing datagrams (loss): return False to drop.
        self.send_filter: Callable[[bytes, Address], bool] | None = None

    # ------------------------------------------------------------------ public

    @property
    def public_port(self) -> int:
        """The port advertised in Via/Contact (the bound port unless configured)."""
        return self._public_port or self.port

    def port_for(self, transport: Transport) -> int:
        """The port advertised in Via/Contact for `transport` (TLS has its own listener)."""
        if transport is Transport.TLS:
            return self._public_tls_port or self.tls_port
        return self.public_port

    def sent_by(self, transport: Transport = Transport.UDP) -> str:
        """`host:port` for Via sent-by and Contact (IPv6 in brackets)."""
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"{host}:{self.port_for(transport)}"

    @property
    def default_transport(self) -> Transport:
        return Transport.UDP if self.udp_enabled else Transport.TCP

    async def run(self, *, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, start the readers, report `self` as started, and serve until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._bind()
                if self._udp is not None:
                    nursery.start_soon(self._udp_reader, self._udp)
                if self._listener is not None:
                    nursery.start_soon(self._tcp_acceptor, self._listener, Transport.TCP)
                if self.tls_server_context is not None:
                    listeners = await trio.open_tcp_listeners(self.tls_port, host=self.bind_host)
                    for extra in listeners[1:]:
                        await extra.aclose()
                    self._tls_listener = listeners[0]
                    self.tls_port = self._tls_listener.socket.getsockname()[1]
                    nursery.start_soon(self._tcp_acceptor, self._tls_listener, Transport.TLS)
                log.info("SIP transport on %s port %d (udp=%s tcp=%s)", self.bind_host, self.port,
                         self.udp_enabled, self.tcp_enabled)  # fmt: skip
                task_status.started(self)
                await trio.sleep_forever()
            finally:
                self._nursery = None
                with trio.CancelScope(shield=True):
                    for conn in list(self._conns.values()):
                        await self._close(conn)
                    if self._listener is not None:
                        await self._listener.aclose()
                    if self._tls_listener is not None:
                        await self._tls_listener.aclose()
                    if self._udp is not None:
                        self._udp.close()
                    if self._udp_errqueue is not None:
                        self._udp_errqueue.close()
                await self._send_inbound.aclose()
                await self._send_unreachable.aclose()

    async def send(self, data: bytes, dest: Address) -> None:
        """Send one message to `dest`; raises TransportError when it cannot be sent."""
        if not 0 < dest.port < 65536:
            self.stats.send_errors += 1
            raise TransportError(f"cannot send to {dest}: no valid port")
        if self.send_filter is not None and not self.send_filter(data, dest):
            return
        match dest.transport:
            case Transport.UDP:
                await self._send_udp(data, dest)
            case Transport.TCP | Transport.TLS:
                await self._send_tcp(data, dest)
        self.stats.sent += 1

    def response_address(self, request: Request, source: Address) -> Address:
        """Where a response to `request` goes (RFC 3261 §18.2.2, RFC 3581 §4)."""
        if source.transport.reliable or "Via" not in request.headers:
            return source  # back over the connection (or the address) it came from
        via = request.top_via
        host = via.received or source.host
        if via.rport is not None:
            return Address(host, via.rport, Transport.UDP)
        return Address(host, via.port or 5060, Transport.UDP)

    # ------------------------------------------------------------------ binding

    async def _bind(self) -> None:
        for _attempt in range(20):
            port = self.port
            udp = listener = None
            try:
                if self.udp_enabled:
                    udp = trio.socket.socket(self._family, trio.socket.SOCK_DGRAM)
                    udp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, self.rcvbuf)
                    await udp.bind((self.bind_host, port))
                    port = udp.getsockname()[1]
                if self.tcp_enabled:
                    listeners = await trio.open_tcp_listeners(port, host=self.bind_host)
                    listener = listeners[0]
                    for extra in listeners[1:]:
                        await extra.aclose()
                    port = listener.socket.getsockname()[1]
            except OSError as exc:
                if udp is not None:
                    udp.close()
                # With port 0 the UDP port may be taken for TCP: try another.
                if self.port == 0 and exc.errno == errno.EADDRINUSE:
                    continue
                raise
            self._udp, self._listener, self.port = udp, listener, port
            if udp is not None:
                self._udp_errqueue = _errqueue_reader(udp)
            return
        raise OSError(errno.EADDRINUSE, "no free port for both UDP and TCP")

    # ------------------------------------------------------------------ inbound

    async def _deliver(self, message: Request | Response, source: Address) -> None:
        if isinstance(message, Request):
            message = _stamp_via(message, source)
        self.stats.received += 1
        await self._send_inbound.send(Inbound(message, source))

    async def _udp_reader(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                data, addr = await sock.recvfrom(MAX_DATAGRAM)
            except OSError as exc:  # an ICMP error reported on the socket (queued: see below)
                log.debug("UDP receive error: %s", exc)
                self._drain_errqueue()
                continue
            source = Address(addr[0], addr[1], Transport.UDP)
            try:
                message = parse_datagram_untrusted(data)
            except SipParseError as exc:
                self.stats.bad_datagrams += 1
                log.info("dropped bad datagram from %s: %s", source, exc)
                continue
            if isinstance(message, KeepAlive):
                self.stats.keepalives += 1
                continue
            await self._deliver(message, source)

    def _drain_errqueue(self) -> None:
        """Read every queued ICMP error and report the destinations found unreachable.

        The queue must be emptied: while it holds an entry the socket polls as in error, and the
        reader would spin."""
        sock = self._udp_errqueue
        if sock is None:
            return
        while True:
            try:
                _data, ancdata, _flags, addr = sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP error queue: %s", exc)
                return
            for _level, _type, cmsg in ancdata:
                if len(cmsg) < _EXTENDED_ERR.size or not isinstance(addr, tuple):
                    continue
                ee_errno, origin, icmp_type, icmp_code, _pad, _info, _d = _EXTENDED_ERR.unpack_from(cmsg)
                self.stats.icmp_errors += 1
                dest = Address(str(addr[0]), int(addr[1]), Transport.UDP)
                if not icmp_unreachable(origin, icmp_type, icmp_code):
                    log.debug("ICMP type %d code %d for %s ignored", icmp_type, icmp_code, dest)
                    continue
                reason = os.strerror(ee_errno)
                log.info("UDP to %s: %s (ICMP type %d code %d)", dest, reason, icmp_type, icmp_code)
                # Nobody listening, or too far behind: Timer B/F still ends the transaction.
                with suppress(trio.WouldBlock, trio.ClosedResourceError):
                    self._send_unreachable.send_nowait(Unreachable(dest, reason))

    async def _tcp_acceptor(self, listener: trio.SocketListener, transport: Transport) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # e.g. EMFILE: back off instead of dying
                log.warning("TCP accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            try:
                peer = stream.socket.getpeername()
            except OSError:  # reset before we looked
                await trio.aclose_forcefully(stream)
                continue
            if len(self._conns) >= self.max_tcp_connections:
                self.stats.tcp_refused += 1
                self._log_cap("total", f"{self.max_tcp_connections} SIP TCP connections open: refusing more")
                await trio.aclose_forcefully(stream)
                continue
            host = str(peer[0])
            if self._per_address.get(host, 0) >= self.max_tcp_per_address:
                self.stats.tcp_refused_per_address += 1
                self._log_cap(
                    "address", f"{self.max_tcp_per_address} SIP TCP connections from {host}: refusing more"
                )
                await trio.aclose_forcefully(stream)
                continue
            wrapped: trio.SocketStream | trio.SSLStream[trio.SocketStream] = stream
            if transport is Transport.TLS:
                assert self.tls_server_context is not None
                # The handshake runs on the first read, in the reader task (bounded by its idle timer).
                wrapped = trio.SSLStream(stream, self.tls_server_context, server_side=True)
            conn = _Conn(wrapped, Address(host, peer[1], transport), trio.current_time(), inbound=True)
            key = (conn.peer.host, conn.peer.port, transport)
            old = self._conns.get(key)
            if old is not None:
                await self._close(old)
            self._conns[key] = conn
            self._per_address[host] = self._per_address.get(host, 0) + 1
            self.stats.tcp_accepted += 1
            assert self._nursery is not None
            self._nursery.start_soon(self._tcp_reader, conn)

    def _log_cap(self, which: str, text: str) -> None:
        """The first refusal by each cap is logged; the rest are counted (stats)."""
        if which not in self._cap_logged:
            self._cap_logged.add(which)
            log.warning("%s (logged once; see the transport's counters)", text)

    async def _tcp_reader(self, conn: _Conn) -> None:
        parser = StreamParser()
        # When the message being received began (an accepted connection: its accept, until its
        # first message); None while nothing is pending. Bounds trickled heads and silent peers.
        started: float | None = conn.last_used if conn.inbound else None
        first = conn.inbound
        try:
            while not conn.closed:
                idle_at = conn.last_used + self.tcp_idle_timeout
                head_at = math.inf if started is None else started + self.tcp_head_timeout
                with trio.move_on_at(min(idle_at, head_at)) as timer:
                    try:
                        data = await conn.stream.receive_some(65536)
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        if isinstance(exc.__cause__, ssl.SSLError):
                            self.stats.tls_failures += 1
                            log.info("TLS with %s failed: %s", conn.peer, exc.__cause__)
                        return
                if timer.cancelled_caught:
                    now = trio.current_time()
                    if head_at <= now:
                        self.stats.tcp_head_timeouts += 1
                        log.debug("closing %s: no complete message in %gs", conn.peer, self.tcp_head_timeout)
                        return
                    if conn.last_used + self.tcp_idle_timeout <= now:
                        log.debug("closing idle connection %s", conn.peer)
                        return
                    continue
                if not data:
                    return  # EOF
                conn.last_used = now = trio.current_time()
                parser.feed(bytes(data))
                if started is None:
                    started = now
                while (event := parser.next_event()) is not None:
                    match event:
                        case KeepAlive(ping=ping):
                            self.stats.keepalives += 1
                            if ping:  # RFC 5626 §4.4.1: answer a CRLFCRLF ping with a CRLF pong
                                await self._write(conn, b"\r\n")
                        case BadMessage(error=error, fatal=fatal):
                            self.stats.bad_stream_messages += 1
                            log.info("bad message on %s: %s", conn.peer, error)
                            reply = error_response(error)
                            if reply is not None:
                                await self._write(conn, bytes(reply))
                            if fatal:
                                return  # the stream is out of sync: close it
                        case Request() | Response():
                            first = False
                            started = now  # the next message's clock starts here
                            await self._deliver(event, conn.peer)
                if parser.buffered == 0 and not first:
                    started = None  # nothing pending: only the idle timer runs
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await self._close(conn)

    # ------------------------------------------------------------------ outbound

    async def _send_udp(self, data: bytes, dest: Address) -> None:
        if self._udp is None:
            raise TransportError("UDP is not enabled")
        for attempt in range(2):
            try:
                await self._udp.sendto(data, (dest.host, dest.port))
                return
            except OSError as exc:  # includes socket.gaierror (unresolvable)
                if attempt == 0 and exc.errno in _ICMP_ERRNOS and self._udp_errqueue is not None:
                    # The pending error of an earlier datagram (maybe to another destination),
                    # not this one: report it where it belongs and send this one again.
                    self._drain_errqueue()
                    continue
                self.stats.send_errors += 1
                raise TransportError(f"cannot send to {dest}: {exc}") from exc

    async def _send_tcp(self, data: bytes, dest: Address) -> None:
        conn = await self._connection(dest)
        try:
            await self._write(conn, data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.stats.send_errors += 1
            await self._close(conn)
            raise TransportError(f"connection to {dest} broke: {exc}") from exc

    async def _write(self, conn: _Conn, data: bytes) -> None:
        async with conn.lock:
            await conn.stream.send_all(data)
        conn.last_used = trio.current_time()

    async def _connection(self, dest: Address) -> _Conn:
        key = (dest.host, dest.port, dest.transport)
        while True:
            conn = self._conns.get(key)
            if conn is not None and not conn.closed:
                return conn
            pending = self._connecting.get(key)
            if pending is None:
                break
            await pending.wait()
        if self._nursery is None:
            raise TransportError("transport is not running")
        if len(self._conns) >= self.max_tcp_connections:
            raise TransportError("too many TCP connections")
        done = self._connecting[key] = trio.Event()
        try:
            with trio.move_on_after(self.connect_timeout) as timeout:
                try:
                    stream = await self._connect(dest)
                except (OSError, trio.BrokenResourceError) as exc:
                    self.stats.send_errors += 1
                    raise TransportError(f"cannot connect to {dest}: {exc}") from exc
            if timeout.cancelled_caught:
                self.stats.send_errors += 1
                raise TransportError(f"timed out connecting to {dest}")
            conn = _Conn(stream, dest, trio.current_time())
            self._conns[key] = conn
            self.stats.tcp_connected += 1
            self._nursery.start_soon(self._tcp_reader, conn)
            return conn
        finally:
            del self._connecting[key]
            done.set()

    async def _connect(self, dest: Address) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        tcp = await trio.open_tcp_stream(dest.host, dest.port)
        if dest.transport is not Transport.TLS:
            return tcp
        if self.tls_client_context is None:
            await tcp.aclose()
            raise OSError("TLS is not configured (no client context)")
        # §26.3.1: the server's certificate must match the host we wanted to reach.
        tls = trio.SSLStream(tcp, self.tls_client_context, server_hostname=dest.host)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            self.stats.tls_failures += 1
            await trio.aclose_forcefully(tcp)
            raise
        return tls

    async def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        key = (conn.peer.host, conn.peer.port, conn.peer.transport)
        if self._conns.get(key) is conn:
            del self._conns[key]
        if conn.inbound:
            left = self._per_address.get(conn.peer.host, 0) - 1
            if left > 0:
                self._per_address[conn.peer.host] = left
            else:
                self._per_address.pop(conn.peer.host, None)
        self.stats.tcp_closed += 1
        await trio.aclose_forcefully(conn.stream)


def _errqueue_reader(udp: trio.socket.SocketType) -> socket.socket | None:
    """Turn on IP_RECVERR / IPV6_RECVERR on `udp` and return a non-blocking duplicate of it for
    reading its error queue synchronously; None where the option does not exist."""
    level_option = _RECVERR.get(udp.family)
    if level_option is None:
        return None
    try:
        udp.setsockopt(level_option[0], level_option[1], 1)
    except OSError as exc:
        log.debug("no ICMP error reporting on the SIP UDP socket: %s", exc)
        return None
    errqueue = socket.socket(fileno=os.dup(udp.fileno()))
    errqueue.setblocking(False)
    return errqueue


def _stamp_via(request: Request, source: Address) -> Request:
    """RFC 3261 §18.2.1 `received` and RFC 3581 §4 `rport` on the request's top Via."""
    values = request.headers.get_all("Via")
    if not values:
        return request
    via = request.top_via
    new = via
    # §18.2.1 asks for `received` when sent-by differs from the source; we also replace any
    # `received` the sender wrote itself (even when sent-by matches), or a request could name
    # another host as the target of its responses (a reflection).
    if _host_differs(via.host, source.host) or via.received not in (None, source.host):
        new = new.with_param("received", source.host)
    if via.has_rport and via.rport != source.port:
        # RFC 3581 §4: fill rport with the source port (a value sent by the client is replaced),
        # and add received even if equal.
        new = new.with_param("rport", str(source.port)).with_param("received", source.host)
    if new is via:
        return request
    headers = request.headers.replace("Via", [str(new), *values[1:]])
    return Request(request.method, request.uri, headers, request.body)


def _host_differs(sent_by: str, source: str) -> bool:
    try:
        return ipaddress.ip_address(sent_by.strip("[]")) != ipaddress.ip_address(source)
    except ValueError:
        return True  # a host name in sent-by: always add received
