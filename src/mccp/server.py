"""The MCCP server: one TCP (usually TLS) listener for the page and its WebSocket (Trio edge).

Theory of operation
-------------------
trio-websocket 0.12 answers a plain ``GET`` with 400 before any handler sees it, so each
accepted connection first goes through a small HTTP front:

0. admission, at accept and before the TLS handshake: a connection from an address that already
   holds ``max_connections_per_address`` connections is closed at once, without a byte
   (``refused_per_address``). When ``max_handshakes`` connections (all addresses together) are
   still in their TLS handshake or request head, one of them is cut to make room
   (``handshakes_evicted``): the oldest of the address that has the most of them. Slow clients
   hold the phase and an honest handshake takes milliseconds, so evicting keeps the door open to
   newcomers where refusing them would let a slowloris from many addresses shut it, and choosing
   the busiest address spares a page that has one handshake going. Descriptors stay bounded;
1. the request head is read with h11, under a size cap (``max_request_head_bytes``, 431) and a
   time cap (``handshake_timeout``, which also bounds the TLS handshake: slowloris);
2. ``GET /`` and ``GET /lite.html`` get the page, ``GET`` of a caller-supplied route gets that
   route's answer, anything else 404/405/426, and the connection is closed;
3. ``GET /mccp`` with ``Upgrade: websocket`` and an allowed ``Origin`` (:class:`~mccp.access.OriginPolicy`,
   else 403) is handed to ``trio_websocket.wrap_server_stream`` over a :class:`_ReplayStream` that
   gives back the bytes already read before reading on. The extra routes (``/metrics``) answer
   only a :class:`~mccp.access.RouteAccess` that permits the client (else 403).

A listener served with ``proxied=True`` is the plain-WS one behind a TLS-terminating proxy: it
takes connections only from ``trusted_proxies`` (others are closed at accept), exempts them from
the per-address cap at accept, and once the head is read counts the connection (and reports it to
the handler as :attr:`MccpConnection.remote`) under the page's address from ``X-Forwarded-For``
(:func:`~mccp.access.client_address`), 503 beyond the per-address cap.

Each WebSocket connection runs in one nursery, with trio-websocket's own reader task in it: the
caller's handler runs with its :class:`MccpConnection` in the connection's task, and reads the
page through :meth:`MccpConnection.receive`, which decodes frames with the pure
:class:`~mccp.session.Session`, answers ``ping`` and every bad frame itself, applies the rate
limit and returns the next valid page message. While it waits it keeps the connection's timers
as deadlines of that wait: ``hangup`` 408 when no ``call`` comes in ``call_timeout``, and a
WebSocket ping every ``ping_interval``, whose pong is awaited (``pong_timeout``, then the page is
gone) in a task that lives only that long. A page's frames are thus handled while its handler
waits for one (the bridge's always does, but for the moments of a call's set-up); trio-websocket
queues them meanwhile. No task of ours waits for a timer, nor stands between the socket and the
handler: an established call's page costs one task besides the handler's (memory, issue 6).
Bad input from one client is answered, dropped and counted in :class:`ServerStats`; it never
ends the server.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, assert_never

import h11
import trio_websocket

import trio

from .access import AddressSet, OriginPolicy, RouteAccess, client_address
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .limits import TokenBucket
from .messages import (
    BridgeMessage,
    Call,
    Dtmf,
    ErrorReply,
    Hangup,
    HangupRequest,
    PageMessage,
    Ping,
    Pong,
)
from .session import Session, SessionState

log = logging.getLogger("mccp.server")

PAGE_PATHS = ("/", "/lite.html")
MCCP_PATH = "/mccp"
RouteHandler = Callable[[], Awaitable[tuple[int, str, bytes]]]
# Time allowed for closing handshakes (WebSocket close, TLS close_notify) before a forced close.
_CLOSE_GRACE = 2.0
# Bytes read from a TLS connection's socket at a time (see `_SmallReads`).
TLS_READ_BYTES = 2048
# Refusals at accept come in floods: each kind is logged at most once per this many seconds.
_REFUSAL_LOG_INTERVAL = 10.0


@dataclass(frozen=True)
class ServerLimits:
    """Per-server caps; every one of them protects the bridge from a bad or broken client."""

    max_frame_bytes: int = 65536
    """Largest text frame (characters): bigger ones get ``error`` 413 and a 1009 close."""
    max_messages_per_second: float = 20.0
    """Sustained page messages per second per connection (token bucket); excess -> 429."""
    message_burst: float = 40.0
    """Token bucket size: how many messages may come at once."""
    max_connections_per_address: int = 16
    """Open connections from one IP address; more are closed at accept (behind a proxy: 503)."""
    max_handshakes: int = 256
    """Connections in their TLS handshake or request head at once, all addresses; more are closed
    at accept."""
    call_timeout: float = 10.0
    """Seconds the page has to send ``call`` after the WebSocket opens."""
    ping_interval: float = 15.0
    """Seconds between WebSocket pings (proxies cut idle sockets at 30 s)."""
    pong_timeout: float = 10.0
    """Seconds to wait for the pong before the page counts as gone."""
    max_request_head_bytes: int = 16384
    """Largest HTTP request head; bigger gets 431."""
    handshake_timeout: float = 10.0
    """Seconds for TLS handshake + request head + WebSocket handshake."""
    send_timeout: float = 5.0
    """Seconds one message to the page may take to be written; a page that reads nothing that
    long is gone (its call ends). Sends are never cut by a cancellation before that."""


@dataclass
class ServerStats:
    """Counters the server keeps (the bridge exports them as metrics)."""

    connections_open: int = 0
    connections_total: int = 0
    handshakes_open: int = 0
    http_requests: int = 0
    websockets_total: int = 0
    refused_per_address: int = 0
    handshakes_evicted: int = 0
    refused_untrusted_proxy: int = 0
    refused_origin: int = 0
    refused_route: int = 0
    bad_requests: int = 0
    handshake_failures: int = 0
    messages_received: int = 0
    messages_dropped: int = 0
    errors_sent: int = 0
    rate_limited: int = 0
    call_timeouts: int = 0
    pong_timeouts: int = 0
    handler_failures: int = 0
    per_address: dict[str, int] = field(default_factory=dict)


class PageGone(Exception):
    """The page's socket closed or vanished; ``reason`` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _SmallReads(trio.abc.Stream):
    """The TCP stream under a TLS connection, read `TLS_READ_BYTES` at a time (memory, issue 6).

    ``trio.SSLStream`` writes whatever one read returns (up to 64 KiB) into its incoming
    ``ssl.MemoryBIO``, and OpenSSL's memory BIO keeps a buffer of about 4/3 of the largest write
    for the connection's life: a browser's 5 KB ``call`` offer left ~7 KiB per call. In small
    reads the BIO stays small (OpenSSL moves each piece into its record buffer, which
    SSL_MODE_RELEASE_BUFFERS, set by Python's ``ssl``, frees between records).
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: trio.SocketStream) -> None:
        self._inner = inner

    def receive_some(self, max_bytes: int | None = None) -> Coroutine[Any, Any, bytes | bytearray]:
        # A plain method returning the socket's coroutine: no frame of its own waits in every
        # page's reader task (memory per call, issue 6).
        size = TLS_READ_BYTES if max_bytes is None else min(max_bytes, TLS_READ_BYTES)
        return self._inner.receive_some(size)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ReplayStream(trio.abc.Stream):
    """A stream that first returns ``prefix`` (bytes already read), then reads ``inner``."""

    __slots__ = ("_inner", "_prefix")

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    def receive_some(self, max_bytes: int | None = None) -> Coroutine[Any, Any, bytes | bytearray]:
        # Once the prefix is given back, the inner stream's coroutine itself: no frame of ours
        # waits in every page's reader task (memory per call, issue 6).
        if self._prefix:
            return self._replay(max_bytes)
        return self._inner.receive_some(max_bytes)

    async def _replay(self, max_bytes: int | None) -> bytes:
        n = len(self._prefix) if max_bytes is None else max_bytes
        data, self._prefix = self._prefix[:n], self._prefix[n:]
        await trio.lowlevel.checkpoint()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        with trio.move_on_after(_CLOSE_GRACE, shield=True) as scope:
            await self._inner.aclose()
        if scope.cancelled_caught:
            await trio.aclose_forcefully(self._inner)


class MccpConnection:
    """One page's MCCP connection, as the bridge's handler sees it."""

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        *,
        remote: tuple[str, int],
        origin: str | None,
        limits: ServerLimits,
        stats: ServerStats,
        nursery: trio.Nursery,
    ) -> None:
        self.remote = remote
        """The page's (address, port)."""
        self.origin = origin
        """The upgrade request's ``Origin`` (``"null"`` from ``file://`` pages; None if absent)."""
        self._ws = ws
        self._limits = limits
        self._stats = stats
        now = trio.current_time()
        self._session = Session(now=now, call_timeout=limits.call_timeout)
        self._bucket = TokenBucket(rate=limits.max_messages_per_second, burst=limits.message_burst, now=now)
        self._last_429 = -1e9
        self._next_ping = now + limits.ping_interval
        self._nursery = nursery  # the connection's: the keep-alive pings run there
        self._gone: str | None = None
        self._pinging = False
        self._wait: trio.CancelScope | None = None  # a `receive_until` waiting for a frame
        self._woken = False

    @property
    def state(self) -> SessionState:
        """The MCCP session state (AWAITING_CALL ... ENDED)."""
        return self._session.state

    @property
    def call(self) -> Call | None:
        """The page's ``call`` message once it was received (until :meth:`release_call`)."""
        return self._session.call

    def release_call(self) -> None:
        """Let go of the ``call`` message (its SDP offer is ~5 KB from a browser) once the bridge
        has it (memory per call, issue 6); the session's state is unchanged."""
        self._session.release_call()

    async def receive(self) -> PageMessage:
        """The next valid page message (``call``, ``dtmf``, ``hangup``; ``ping`` is answered here).

        Invalid or out-of-state messages are answered with ``error`` internally and skipped; the
        connection's timers run meanwhile (module docstring). Raises :class:`PageGone` once the
        socket has ended. A cancelled receive loses no message: a frame is taken from
        trio-websocket's queue only when it can be handled at once.
        """
        while True:
            msg = await self.receive_until(math.inf)
            if msg is not None:
                return msg

    async def receive_until(self, deadline: float) -> PageMessage | None:
        """As :meth:`receive`, but None once ``deadline`` has passed or :meth:`wake` was called
        while it waited: the caller's own deadline shares the wait's cancel scope (memory per call,
        issue 6: the bridge's call waits so for its whole life)."""
        limits = self._limits
        self._woken = False
        while True:
            if self._gone is not None:
                raise PageGone(self._gone)
            if self._woken:  # while a frame was being handled
                return None
            call_deadline = self._session.next_deadline()
            wake = min(self._next_ping, deadline)
            if call_deadline is not None:
                wake = min(wake, call_deadline)
            data: str | bytes | None = None
            with trio.move_on_at(wake) as self._wait:  # get_message is a channel receive: nothing is lost
                try:
                    data = await self._ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    self._mark_gone(_close_text(exc.reason))
                    raise PageGone(self._gone or "closed") from None
                finally:
                    self._wait = None
            now = trio.current_time()
            if data is None:  # a deadline, or woken
                if now >= self._next_ping:
                    self._next_ping = now + limits.ping_interval
                    if not self._pinging:
                        self._pinging = True
                        self._nursery.start_soon(self._ping)
                await self._call_timer(now)
                if self._woken or now >= deadline:
                    return None
                continue
            msg = await self._frame(data, now)
            if msg is not None:
                return msg

    def wake(self) -> None:
        """Make a :meth:`receive_until` that is waiting return None now (e.g. its deadline moved)."""
        self._woken = True
        if self._wait is not None:
            self._wait.cancel()

    async def send(self, msg: BridgeMessage) -> None:
        """Send one bridge message.

        Raises :class:`PageGone` if the socket is gone, and
        :class:`~mccp.errors.LocalProtocolError` if ``msg`` is not allowed in this state.
        """
        text = self._session.send(msg)
        await self._send_text(text)

    async def aclose(self) -> None:
        """Close the WebSocket (normal closure), bounded in time. Idempotent."""
        await self._close(1000, "bye")

    # ------------------------------------------------------------------ internals

    async def _send_text(self, text: str) -> None:
        if self._gone is not None:
            raise PageGone(self._gone)
        # A send cut by a cancellation would leave half a frame on the TLS stream and break it for
        # every later message (the call's `hangup` included): the write is shielded, bounded instead.
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self._limits.send_timeout) as bound:
                try:
                    await self._ws.send_message(text)
                except trio_websocket.ConnectionClosed as exc:
                    self._mark_gone(_close_text(exc.reason))
                    raise PageGone(self._gone or "closed") from None
        if bound.cancelled_caught:
            self._mark_gone(f"not reading (send timed out after {self._limits.send_timeout:g} s)")
            raise PageGone(self._gone or "send timed out")
        await trio.lowlevel.checkpoint_if_cancelled()

    async def _reply_error(self, code: ErrorCode, reason: str) -> None:
        self._stats.errors_sent += 1
        await self._send_text(self._session.send(ErrorReply(int(code), reason)))

    def _mark_gone(self, reason: str) -> None:
        if self._gone is None:
            self._gone = reason

    async def _close(self, code: int, reason: str) -> None:
        with trio.move_on_after(_CLOSE_GRACE, shield=True):
            await self._ws.aclose(code, reason)
        self._mark_gone(f"closed by bridge ({code})")

    async def _frame(self, data: str | bytes, now: float) -> PageMessage | None:
        """One frame from the page: the message the handler gets, or None (answered or dropped)."""
        limits, stats = self._limits, self._stats
        stats.messages_received += 1
        if not self._bucket.allow(now):
            stats.rate_limited += 1
            stats.messages_dropped += 1
            if now - self._last_429 >= 1.0:  # one 429 a second, not one per dropped frame
                self._last_429 = now
                await self._reply_error(ErrorCode.RATE_LIMITED, "too many messages; dropped")
            return None
        if len(data) > limits.max_frame_bytes:
            stats.messages_dropped += 1
            await self._reply_error(
                ErrorCode.TOO_BIG, f"frame of {len(data)} over the {limits.max_frame_bytes} limit"
            )
            await self._close(1009, "message too big")  # RFC 6455 section 7.4.1
            raise PageGone(self._gone or "closed")
        if isinstance(data, bytes):
            stats.messages_dropped += 1
            await self._reply_error(ErrorCode.BINARY_FRAME, "binary frame: MCCP uses JSON text frames")
            return None
        try:
            msg = self._session.receive_text(data)
        except RemoteProtocolError as exc:
            stats.messages_dropped += 1
            await self._reply_error(exc.code, exc.reason)
            return None
        match msg:
            case Ping():
                await self._send_text(self._session.send(Pong()))
                return None
            case Call() | Dtmf() | HangupRequest():
                return msg
            case _:
                assert_never(msg)

    async def _ping(self) -> None:
        """One keep-alive ping; the page is gone if its pong does not come in ``pong_timeout``."""
        # RFC 6455 section 5.5.2: a peer that receives a Ping MUST answer it with a Pong.
        try:
            with trio.move_on_after(self._limits.pong_timeout) as scope:
                await self._ws.ping()
        except trio_websocket.ConnectionClosed:
            return
        finally:
            self._pinging = False
        if scope.cancelled_caught:
            self._stats.pong_timeouts += 1
            self._mark_gone("no pong in time")
            await self._close(1011, "no pong")  # RFC 6455 7.4.1: unexpected condition

    async def _call_timer(self, now: float) -> None:
        """``hangup`` 408 once no ``call`` came in time, and the connection closed (PageGone)."""
        hangup = self._session.handle_timeout(now)
        if hangup is None:
            return
        self._stats.call_timeouts += 1
        await self.send(hangup)
        self._mark_gone("no call in time")
        await self._close(1000, "no call in time")
        raise PageGone(self._gone or "no call in time")


def load_page() -> bytes:
    """The bundled web page, ``static/lite.html`` (pass it as ``serve_mccp(page=...)``)."""
    return resources.files("mccp").joinpath("static/lite.html").read_bytes()


def _close_text(reason: trio_websocket.CloseReason | None) -> str:
    if reason is None:
        return "closed"
    return f"closed ({reason.code}{' ' + reason.reason if reason.reason else ''})"


def _peer(stream: trio.SocketStream) -> tuple[str, int]:
    try:
        name = stream.socket.getpeername()
    except OSError:
        return ("?", 0)
    return (str(name[0]), int(name[1]))


async def _read_head(
    stream: trio.abc.Stream, conn: h11.Connection, cap: int
) -> tuple[h11.Request | None, bytes, int | None]:
    """Read one request head. Returns (request, raw bytes read, error status)."""
    raw = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return None, bytes(raw), exc.error_status_hint
        if isinstance(event, h11.Request):
            return event, bytes(raw), None
        if event is not h11.NEED_DATA:
            return None, bytes(raw), 400
        data = bytes(await stream.receive_some(4096))
        if not data:
            return None, bytes(raw), None
        raw += data
        if len(raw) > cap:  # checked before parsing: a complete but huge head is refused too
            return None, bytes(raw), 431
        conn.receive_data(data)


async def _respond(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    ctype: str,
    body: bytes,
    *,
    head_only: bool = False,
) -> None:
    headers = [
        ("Content-Type", ctype),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
        ("Connection", "close"),
    ]
    if conn.our_state is not h11.SEND_RESPONSE:
        # The request was unparseable: h11 cannot answer it, write a bare response.
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"GET / HTTP/1.0\r\n\r\n")
        conn.next_event()
    data = conn.send(h11.Response(status_code=status, headers=headers))
    if not head_only:  # RFC 9110 section 9.3.2: a response to HEAD has no content
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


def _text(status: int, message: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", (message + "\n").encode()


class _Slot:
    """One admitted connection's place in the counters: its address's count and the handshake phase.

    While in its handshake it is in the front's insertion-ordered ``_pending`` (oldest first) and
    counted in ``_pending_by_address``; ``scope`` bounds the handshake and is cancelled to evict it.
    """

    def __init__(self, front: MccpFront, address: str, deadline: float) -> None:
        stats = front.stats
        self._stats = stats
        self._pending = front._pending
        self._pending_by_address = front._pending_by_address
        self.address = address
        self.scope = trio.CancelScope(deadline=deadline)
        self._pending[self] = None
        self._pending_by_address[address] = self._pending_by_address.get(address, 0) + 1
        stats.connections_open += 1
        stats.connections_total += 1
        stats.handshakes_open += 1
        stats.per_address[address] = stats.per_address.get(address, 0) + 1

    def end_handshake(self) -> None:
        if self in self._pending:
            del self._pending[self]
            self._stats.handshakes_open -= 1
            by_address = self._pending_by_address
            by_address[self.address] -= 1
            if not by_address[self.address]:
                del by_address[self.address]

    def evict(self) -> None:
        """Cut this connection's handshake now (its task sees the cancellation and closes)."""
        self.end_handshake()
        self.scope.cancel()

    def move_to(self, address: str) -> int:
        """Count this connection under ``address`` instead (behind a proxy); its new count there."""
        per_address = self._stats.per_address
        self._leave()
        self.address = address
        per_address[address] = per_address.get(address, 0) + 1
        return per_address[address]

    def _leave(self) -> None:
        per_address = self._stats.per_address
        per_address[self.address] -= 1
        if not per_address[self.address]:
            del per_address[self.address]

    def release(self) -> None:
        self.end_handshake()
        self._stats.connections_open -= 1
        self._leave()


@dataclass(frozen=True)
class MccpFront:
    """Serves accepted connections: the page, extra routes, and MCCP over WebSocket.

    :func:`serve_mccp` makes one and serves its listeners with it (:func:`serve_front`); tests
    drive :meth:`serve_stream` over memory streams. One front may serve several listeners (the
    TLS port and the plain-WS port for a proxy): they share its caps and counters. ``origins``
    says which pages may open the WebSocket (403 for the others), ``route_access`` who may read
    ``routes`` (None: everyone; refused: 403), ``trusted_proxies`` whose ``X-Forwarded-For`` is
    believed on a ``proxied`` listener.
    """

    handler: Callable[[MccpConnection], Awaitable[None]]
    page: bytes
    limits: ServerLimits = ServerLimits()
    routes: Mapping[str, RouteHandler] = field(default_factory=dict)
    stats: ServerStats = field(default_factory=ServerStats)
    origins: OriginPolicy = field(default_factory=OriginPolicy)
    route_access: RouteAccess | None = None
    trusted_proxies: AddressSet = field(default_factory=AddressSet)
    # When each kind of refusal at accept was last logged (a flood is logged once per interval).
    _logged: dict[str, float] = field(default_factory=dict, repr=False, compare=False)
    # Connections in their handshake, oldest first (dicts keep insertion order), and per address.
    _pending: dict[_Slot, None] = field(default_factory=dict, repr=False, compare=False)
    _pending_by_address: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def _refuse_at_accept(self, address: str, *, proxied: bool) -> tuple[str, str] | None:
        """(kind, why) a new connection from ``address`` is closed at once; None: admitted."""
        st, limits = self.stats, self.limits
        if proxied and address not in self.trusted_proxies:
            st.refused_untrusted_proxy += 1
            return "proxy", "closed at accept: not a trusted proxy (plain-WS listener)"
        if not proxied and st.per_address.get(address, 0) >= limits.max_connections_per_address:
            st.refused_per_address += 1
            return "address", f"closed at accept: {limits.max_connections_per_address} connections open"
        return None

    def _make_room(self) -> None:
        """At the handshake cap, evict the oldest handshake of the address that has the most."""
        while self._pending and self.stats.handshakes_open >= self.limits.max_handshakes:
            by_address = self._pending_by_address
            busiest = max(by_address, key=by_address.__getitem__)
            oldest = next(slot for slot in self._pending if slot.address == busiest)
            oldest.evict()
            self.stats.handshakes_evicted += 1
            self._log_refusal(
                "evicted",
                f"cut in its handshake: {self.limits.max_handshakes} connections in their handshake",
                oldest.address,
            )

    def _log_refusal(self, kind: str, why: str, address: str) -> None:
        now = trio.current_time()
        if now - self._logged.get(kind, -1e9) < _REFUSAL_LOG_INTERVAL:
            return
        self._logged[kind] = now
        st = self.stats
        log.warning(
            "mccp %s: %s (so far: %d closed at accept over the per-address cap, %d untrusted "
            "proxies, %d cut in their handshake over the global cap; logged at most every %g s)",
            address,
            why,
            st.refused_per_address,
            st.refused_untrusted_proxy,
            st.handshakes_evicted,
            _REFUSAL_LOG_INTERVAL,
        )

    async def serve_stream(
        self, stream: trio.abc.Stream, remote: tuple[str, int], *, proxied: bool = False
    ) -> None:
        """Serve one connection until done; closes ``stream``.

        Call it before any byte is read (for TLS: before the handshake, which ``SSLStream`` does
        lazily): a connection over the caps is closed here at once. ``proxied``: see the module
        docstring.
        """
        refusal = self._refuse_at_accept(remote[0], proxied=proxied)
        if refusal is not None:
            self._log_refusal(*refusal, remote[0])
            await trio.aclose_forcefully(stream)
            return
        self._make_room()
        st = self.stats
        slot = _Slot(self, remote[0], trio.current_time() + self.limits.handshake_timeout)
        try:
            upgrade = await self._serve_one(stream, remote, slot, proxied=proxied)
            if upgrade is not None:  # awaited here: _serve_one's frame is not kept for the call
                await self._serve_websocket(*upgrade)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            st.handshake_failures += 1  # TLS failure or the client left mid-request
        except Exception:
            st.handler_failures += 1
            log.exception("mccp %s:%d: connection failed", *remote)
        finally:
            slot.release()
            await trio.aclose_forcefully(stream)

    async def _serve_one(
        self, stream: trio.abc.Stream, remote: tuple[str, int], slot: _Slot, *, proxied: bool
    ) -> tuple[_ReplayStream, tuple[str, int], str | None] | None:
        """Read the request head and answer it; a WebSocket upgrade to serve is returned instead."""
        st, limits = self.stats, self.limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_request_head_bytes)
        request: h11.Request | None = None
        raw, status = b"", None
        with slot.scope:
            request, raw, status = await _read_head(stream, conn, limits.max_request_head_bytes)
        slot.end_handshake()
        if slot.scope.cancelled_caught:
            st.handshake_failures += 1
            return None
        if request is None:
            if status is not None:
                st.bad_requests += 1
                with trio.move_on_after(_CLOSE_GRACE):
                    await _respond(stream, conn, *_text(status, "bad request"))
            return None
        st.http_requests += 1
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        headers = {name.lower(): value for name, value in request.headers}
        origin = headers[b"origin"].decode("ascii", "replace") if b"origin" in headers else None
        host = headers[b"host"].decode("ascii", "replace") if b"host" in headers else None
        upgrade = headers.get(b"upgrade", b"").lower()
        over_cap = False
        if proxied:
            forwarded = [value for name, value in request.headers if name == b"x-forwarded-for"]
            client = client_address(remote[0], forwarded, self.trusted_proxies)
            if client != remote[0]:
                remote = (client, 0)
                over_cap = slot.move_to(client) > limits.max_connections_per_address
        if over_cap:
            st.refused_per_address += 1
            log.warning("mccp %s (via proxy): refused, too many connections from this address", remote[0])
            answer = _text(503, "too many connections from your address")
        elif request.method not in (b"GET", b"HEAD"):
            answer = _text(405, "method not allowed")
        elif path == MCCP_PATH and request.method == b"GET" and upgrade == b"websocket":
            if self.origins.allows(origin, host=host):
                # The h11 state, the parsed head and its bytes (given back by the replay stream)
                # are dead weight for the call's lifetime (~2.8 KiB).
                replay = _ReplayStream(stream, raw)
                del conn, request, headers, raw
                return replay, remote, origin
            st.refused_origin += 1
            log.info("mccp %s:%d: WebSocket refused: origin %r not allowed", remote[0], remote[1], origin)
            answer = _text(403, "origin not allowed")
        elif path == MCCP_PATH:
            answer = _text(426, "this path speaks MCCP over WebSocket only")
        elif path in PAGE_PATHS:
            answer = (200, "text/html; charset=utf-8", self.page)
        elif path in self.routes:
            access = self.route_access
            if access is not None and not access.permits(remote[0], headers.get(b"authorization")):
                st.refused_route += 1
                answer = _text(403, "forbidden")
            else:
                try:
                    answer = await self.routes[path]()
                except Exception:
                    log.exception("mccp route %s failed", path)
                    answer = _text(500, "internal error")
        else:
            answer = _text(404, "not found")
        with trio.move_on_after(_CLOSE_GRACE):
            await _respond(stream, conn, *answer, head_only=request.method == b"HEAD")
        return None

    async def _serve_websocket(
        self, stream: _ReplayStream, remote: tuple[str, int], origin: str | None
    ) -> None:
        st, limits = self.stats, self.limits
        async with trio.open_nursery() as nursery:
            ws: trio_websocket.WebSocketConnection | None = None
            with trio.move_on_after(limits.handshake_timeout):
                request = await trio_websocket.wrap_server_stream(
                    nursery,
                    stream,
                    # Frames up to twice the limit are read so that they can be refused with an
                    # MCCP 413 first; trio-websocket closes bigger ones itself (1009).
                    max_message_size=2 * limits.max_frame_bytes,
                )
                ws = await request.accept()
                del request  # the upgrade request and its headers: not kept for the call
            if ws is None:
                st.handshake_failures += 1
                nursery.cancel_scope.cancel()
                return
            st.websockets_total += 1
            _drop_handshake_state(ws)
            mccp = MccpConnection(ws, remote=remote, origin=origin, limits=limits, stats=st, nursery=nursery)
            started = trio.current_time()
            log.info("mccp open %s:%d origin=%s", remote[0], remote[1], origin)
            try:
                await self.handler(mccp)
            except PageGone:
                pass
            except Exception:
                st.handler_failures += 1
                log.exception("mccp %s:%d: handler failed", *remote)
                with suppress(PageGone, LocalProtocolError):
                    await mccp.send(Hangup(500, "bridge failure"))
            finally:
                await mccp._close(1000, "bye")
                nursery.cancel_scope.cancel()
                log.info(
                    "mccp close %s:%d state=%s reason=%s after %.1f s",
                    remote[0],
                    remote[1],
                    mccp.state.value,
                    mccp._gone,
                    trio.current_time() - started,
                )


class _Upgraded:
    """What stands for wsproto's handshake once the connection is open: no more events."""

    __slots__ = ()

    def events(self) -> Iterator[object]:
        return iter(())


_UPGRADED = _Upgraded()


def _drop_handshake_state(ws: trio_websocket.WebSocketConnection) -> None:
    """Free wsproto's handshake machinery once the connection is open (~3 KiB per page).

    trio-websocket keeps its wsproto connection for the socket's life, and wsproto keeps the
    handshake in it (its h11 connection, the upgrade request and its headers, an event queue),
    though once the connection is open it only reads the handshake's event queue, empty by then
    (wsproto 1.2-1.3, `WSConnection.events`). With an empty queue the handshake is replaced by a
    stand-in that has no events; anything else (another version) is left alone.
    """
    wsproto = getattr(ws, "_wsproto", None)
    handshake = getattr(wsproto, "handshake", None)
    if (
        getattr(wsproto, "connection", None) is not None
        and getattr(handshake, "connection", None) is not None
        and not getattr(handshake, "_events", True)
    ):
        wsproto.handshake = _UPGRADED  # type: ignore[union-attr]


async def open_mccp_listeners(host: str, port: int, *, reuse_port: bool = False) -> list[trio.SocketListener]:
    """TCP listeners on ``host:port`` (``port`` 0: a free one). ``reuse_port``: one socket bound with
    SO_REUSEPORT, so that several processes (the bridge's workers) share the port."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host)
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


def listener_addresses(listeners: Sequence[trio.SocketListener]) -> list[tuple[str, int]]:
    """The (host, port) each listener is bound to."""
    return [(str(s.socket.getsockname()[0]), int(s.socket.getsockname()[1])) for s in listeners]


async def serve_front(
    front: MccpFront,
    listeners: Sequence[trio.SocketListener],
    *,
    ssl_context: ssl.SSLContext | None,
    proxied: bool = False,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``listeners`` with ``front`` until cancelled; TLS when ``ssl_context`` is given.

    ``proxied``: the plain-WS listener behind a TLS-terminating proxy (see the module docstring).
    ``task_status.started`` gets the bound (host, port) list.
    """

    def handle_tcp(tcp: trio.SocketStream) -> Coroutine[Any, Any, None]:
        # A plain function returning serve_stream's coroutine: no frame of its own is kept for
        # every connection's life (memory per call, issue 6).
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            # Lazy: the handshake starts at the first read, after the admission check.
            stream = trio.SSLStream(_SmallReads(tcp), ssl_context, server_side=True, https_compatible=True)
        return front.serve_stream(stream, _peer(tcp), proxied=proxied)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle_tcp, listeners)
        task_status.started(listener_addresses(listeners))


async def serve_mccp(
    handler: Callable[[MccpConnection], Awaitable[None]],
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    page: bytes,
    limits: ServerLimits = ServerLimits(),
    routes: Mapping[str, RouteHandler] = {},
    stats: ServerStats | None = None,
    allowed_origins: Collection[str] | None = None,
    route_access: RouteAccess | None = None,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the page and MCCP over WebSocket on ``host:port`` until cancelled.

    ``handler(conn)`` runs once per WebSocket connection, inside that connection's nursery;
    when it returns, the socket is closed. ``ssl_context`` None serves plain HTTP/WS (tests).
    ``routes`` adds GET paths (e.g. ``/metrics``) answering ``(status, content type, body)``,
    readable by whom ``route_access`` permits (None: anyone). ``stats`` receives the counters;
    ``allowed_origins`` restricts who may open the WebSocket (None or empty: any origin; see
    :class:`~mccp.access.OriginPolicy`). ``task_status.started`` gets the bound (host, port)
    list (``port`` 0 picks a free port).
    """
    front = MccpFront(
        handler,
        page,
        limits,
        routes,
        stats if stats is not None else ServerStats(),
        OriginPolicy.from_list(allowed_origins or ()),
        route_access,
    )
    listeners = await open_mccp_listeners(host, port)
    await serve_front(front, listeners, ssl_context=ssl_context, task_status=task_status)


__all__ = [
    "MccpConnection",
    "MccpFront",
    "PageGone",
    "RouteHandler",
    "ServerLimits",
    "ServerStats",
    "listener_addresses",
    "load_page",
    "open_mccp_listeners",
    "serve_front",
    "serve_mccp",
]
