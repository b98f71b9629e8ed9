"""The MCCP server: one TCP (usually TLS) listener for the page and its WebSocket (Trio edge).

Theory of operation
-------------------
trio-websocket 0.12 answers a plain ``GET`` with 400 before any handler sees it, so each
accepted connection first goes through a small HTTP front:

1. the request head is read with h11, under a size cap (``max_request_head_bytes``, 431) and a
   time cap (``handshake_timeout``, which also bounds the TLS handshake: slowloris);
2. ``GET /`` and ``GET /lite.html`` get the page, ``GET`` of a caller-supplied route gets that
   route's answer, anything else 404/405/426, and the connection is closed;
3. ``GET /mccp`` with ``Upgrade: websocket`` is handed to ``trio_websocket.wrap_server_stream``
   over a :class:`_ReplayStream` that gives back the bytes already read before reading on.

Each WebSocket connection runs in its own nursery: a reader task (decodes frames with the pure
:class:`~mccp.session.Session`, answers ``ping`` and every bad frame itself, applies the rate
limit, and queues valid page messages), a keep-alive task (WebSocket ping every
``ping_interval``, closes after ``pong_timeout``), a call-timer task (``hangup`` 408 when no
``call`` comes in ``call_timeout``) and the caller's handler with its :class:`MccpConnection`.
Bad input from one client is answered, dropped and counted in :class:`ServerStats`; it never
ends the server.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from importlib import resources
from typing import assert_never

import h11
import trio_websocket

import trio

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
    """Open connections from one IP address; more get HTTP 503."""
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


@dataclass
class ServerStats:
    """Counters the server keeps (the bridge exports them as metrics)."""

    connections_open: int = 0
    connections_total: int = 0
    http_requests: int = 0
    websockets_total: int = 0
    refused_busy: int = 0
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


class _ReplayStream(trio.abc.Stream):
    """A stream that first returns ``prefix`` (bytes already read), then reads ``inner``."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self._inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            n = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:n], self._prefix[n:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._inner.receive_some(max_bytes))

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
    ) -> None:
        self.remote = remote
        """The page's (address, port)."""
        self.origin = origin
        """The upgrade request's ``Origin`` (``"null"`` from ``file://`` pages; None if absent)."""
        self._ws = ws
        self._limits = limits
        self._stats = stats
        self._session = Session(now=trio.current_time(), call_timeout=limits.call_timeout)
        self._inbox_send, self._inbox = trio.open_memory_channel[PageMessage](8)
        self._gone: str | None = None

    @property
    def state(self) -> SessionState:
        """The MCCP session state (AWAITING_CALL ... ENDED)."""
        return self._session.state

    @property
    def call(self) -> Call | None:
        """The page's ``call`` message once it was received."""
        return self._session.call

    async def receive(self) -> PageMessage:
        """The next valid page message (``call``, ``dtmf``, ``hangup``; ``ping`` is answered here).

        Invalid or out-of-state messages are answered with ``error`` internally and skipped.
        Raises :class:`PageGone` once the socket has ended and every queued message was taken.
        """
        try:
            return await self._inbox.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise PageGone(self._gone or "closed") from None

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
        try:
            await self._ws.send_message(text)
        except trio_websocket.ConnectionClosed as exc:
            self._mark_gone(_close_text(exc.reason))
            raise PageGone(self._gone or "closed") from None

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

    async def _reader(self) -> None:
        limits, stats = self._limits, self._stats
        bucket = TokenBucket(
            rate=limits.max_messages_per_second, burst=limits.message_burst, now=trio.current_time()
        )
        last_429 = -1e9
        try:
            while True:
                try:
                    data = await self._ws.get_message()
                except trio_websocket.ConnectionClosed as exc:
                    self._mark_gone(_close_text(exc.reason))
                    return
                stats.messages_received += 1
                now = trio.current_time()
                if not bucket.allow(now):
                    stats.rate_limited += 1
                    stats.messages_dropped += 1
                    if now - last_429 >= 1.0:  # one 429 a second, not one per dropped frame
                        last_429 = now
                        await self._reply_error(ErrorCode.RATE_LIMITED, "too many messages; dropped")
                    continue
                if len(data) > limits.max_frame_bytes:
                    stats.messages_dropped += 1
                    await self._reply_error(
                        ErrorCode.TOO_BIG, f"frame of {len(data)} over the {limits.max_frame_bytes} limit"
                    )
                    await self._close(1009, "message too big")  # RFC 6455 section 7.4.1
                    return
                if isinstance(data, bytes):
                    stats.messages_dropped += 1
                    await self._reply_error(
                        ErrorCode.BINARY_FRAME, "binary frame: MCCP uses JSON text frames"
                    )
                    continue
                try:
                    msg = self._session.receive_text(data)
                except RemoteProtocolError as exc:
                    stats.messages_dropped += 1
                    await self._reply_error(exc.code, exc.reason)
                    continue
                match msg:
                    case Ping():
                        await self._send_text(self._session.send(Pong()))
                    case Call() | Dtmf() | HangupRequest():
                        await self._inbox_send.send(msg)
                    case _:
                        assert_never(msg)
        except PageGone:
            return
        finally:
            self._inbox_send.close()

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(self._limits.ping_interval)
            # RFC 6455 section 5.5.2: a peer that receives a Ping MUST answer it with a Pong.
            try:
                with trio.move_on_after(self._limits.pong_timeout) as scope:
                    await self._ws.ping()
            except trio_websocket.ConnectionClosed:
                return
            if scope.cancelled_caught:
                self._stats.pong_timeouts += 1
                self._mark_gone("no pong in time")
                await self._close(1011, "no pong")  # RFC 6455 7.4.1: unexpected condition
                return

    async def _call_timer(self) -> None:
        while (deadline := self._session.next_deadline()) is not None:
            await trio.sleep_until(deadline)
            hangup = self._session.handle_timeout(trio.current_time())
            if hangup is not None:
                self._stats.call_timeouts += 1
                try:
                    await self.send(hangup)
                except PageGone:
                    return
                self._mark_gone("no call in time")
                await self._close(1000, "no call in time")
                return


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


@dataclass(frozen=True)
class MccpFront:
    """Serves accepted connections: the page, extra routes, and MCCP over WebSocket.

    :func:`serve_mccp` makes one per listener; tests drive :meth:`serve_stream` over memory
    streams. ``allowed_origins``, when given, is the set of ``Origin`` values that may open the
    WebSocket (``"null"`` is what ``file://`` pages send); others get HTTP 403.
    """

    handler: Callable[[MccpConnection], Awaitable[None]]
    page: bytes
    limits: ServerLimits = ServerLimits()
    routes: Mapping[str, RouteHandler] = field(default_factory=dict)
    stats: ServerStats = field(default_factory=ServerStats)
    allowed_origins: Collection[str] | None = None

    async def serve_stream(self, stream: trio.abc.Stream, remote: tuple[str, int]) -> None:
        """Serve one connection (already TLS-wrapped if need be) until done; closes ``stream``."""
        st = self.stats
        st.connections_open += 1
        st.connections_total += 1
        st.per_address[remote[0]] = st.per_address.get(remote[0], 0) + 1
        try:
            await self._serve_one(stream, remote)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            st.handshake_failures += 1  # TLS failure or the client left mid-request
        except Exception:
            st.handler_failures += 1
            log.exception("mccp %s:%d: connection failed", *remote)
        finally:
            st.connections_open -= 1
            st.per_address[remote[0]] -= 1
            if not st.per_address[remote[0]]:
                del st.per_address[remote[0]]
            await trio.aclose_forcefully(stream)

    async def _serve_one(self, stream: trio.abc.Stream, remote: tuple[str, int]) -> None:
        st, limits = self.stats, self.limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_request_head_bytes)
        request: h11.Request | None = None
        raw, status = b"", None
        with trio.move_on_after(limits.handshake_timeout) as scope:
            request, raw, status = await _read_head(stream, conn, limits.max_request_head_bytes)
        if scope.cancelled_caught:
            st.handshake_failures += 1
            return
        if request is None:
            if status is not None:
                st.bad_requests += 1
                with trio.move_on_after(_CLOSE_GRACE):
                    await _respond(stream, conn, *_text(status, "bad request"))
            return
        st.http_requests += 1
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        headers = {name.lower(): value for name, value in request.headers}
        origin = headers[b"origin"].decode("ascii", "replace") if b"origin" in headers else None
        upgrade = headers.get(b"upgrade", b"").lower()
        if st.per_address.get(remote[0], 0) > limits.max_connections_per_address:
            st.refused_busy += 1
            log.warning("mccp %s:%d: refused, too many connections from this address", *remote)
            answer = _text(503, "too many connections from your address")
        elif request.method not in (b"GET", b"HEAD"):
            answer = _text(405, "method not allowed")
        elif path == MCCP_PATH and request.method == b"GET" and upgrade == b"websocket":
            if self.allowed_origins is None or origin in self.allowed_origins:
                await self._serve_websocket(stream, raw, remote, origin)
                return
            st.bad_requests += 1
            answer = _text(403, "origin not allowed")
        elif path == MCCP_PATH:
            answer = _text(426, "this path speaks MCCP over WebSocket only")
        elif path in PAGE_PATHS:
            answer = (200, "text/html; charset=utf-8", self.page)
        elif path in self.routes:
            try:
                answer = await self.routes[path]()
            except Exception:
                log.exception("mccp route %s failed", path)
                answer = _text(500, "internal error")
        else:
            answer = _text(404, "not found")
        with trio.move_on_after(_CLOSE_GRACE):
            await _respond(stream, conn, *answer, head_only=request.method == b"HEAD")

    async def _serve_websocket(
        self, stream: trio.abc.Stream, raw: bytes, remote: tuple[str, int], origin: str | None
    ) -> None:
        st, limits = self.stats, self.limits
        async with trio.open_nursery() as nursery:
            ws: trio_websocket.WebSocketConnection | None = None
            with trio.move_on_after(limits.handshake_timeout):
                request = await trio_websocket.wrap_server_stream(
                    nursery,
                    _ReplayStream(stream, raw),
                    # Frames up to twice the limit are read so that they can be refused with an
                    # MCCP 413 first; trio-websocket closes bigger ones itself (1009).
                    max_message_size=2 * limits.max_frame_bytes,
                )
                ws = await request.accept()
            if ws is None:
                st.handshake_failures += 1
                nursery.cancel_scope.cancel()
                return
            st.websockets_total += 1
            mccp = MccpConnection(ws, remote=remote, origin=origin, limits=limits, stats=st)
            started = trio.current_time()
            log.info("mccp open %s:%d origin=%s", remote[0], remote[1], origin)
            try:
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(mccp._reader)
                    tasks.start_soon(mccp._keepalive)
                    tasks.start_soon(mccp._call_timer)
                    try:
                        await self.handler(mccp)
                    except PageGone:
                        pass
                    except Exception:
                        st.handler_failures += 1
                        log.exception("mccp %s:%d: handler failed", *remote)
                        with suppress(PageGone, LocalProtocolError):
                            await mccp.send(Hangup(500, "bridge failure"))
                    tasks.cancel_scope.cancel()
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
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the page and MCCP over WebSocket on ``host:port`` until cancelled.

    ``handler(conn)`` runs once per WebSocket connection, inside that connection's nursery;
    when it returns, the socket is closed. ``ssl_context`` None serves plain HTTP/WS (tests, a
    TLS-terminating proxy). ``routes`` adds GET paths (e.g. ``/metrics``) answering
    ``(status, content type, body)``. ``stats`` receives the counters; ``allowed_origins``
    restricts who may open the WebSocket (see :class:`MccpFront`). ``task_status.started`` gets
    the bound (host, port) list (``port`` 0 picks a free port).
    """
    front = MccpFront(
        handler,
        page,
        limits,
        routes,
        stats if stats is not None else ServerStats(),
        frozenset(allowed_origins) if allowed_origins is not None else None,
    )
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = [(str(s.socket.getsockname()[0]), int(s.socket.getsockname()[1])) for s in listeners]

    async def handle_tcp(tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if ssl_context is not None:
            stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
        await front.serve_stream(stream, _peer(tcp))

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle_tcp, listeners)
        task_status.started(bound)


__all__ = [
    "MccpConnection",
    "MccpFront",
    "PageGone",
    "RouteHandler",
    "ServerLimits",
    "ServerStats",
    "load_page",
    "serve_mccp",
]
