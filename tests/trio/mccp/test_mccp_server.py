"""The MCCP server on loopback, with a real TLS certificate (trustme) and real WebSocket clients.

Timers run on the real clock with short limits (sockets and autojump do not mix); every test is
bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import pytest
import trio_websocket
import trustme
import wsproto
import wsproto.events

import trio
from mccp.codec import decode_bridge_untrusted, encode
from mccp.errors import LocalProtocolError
from mccp.messages import (
    Answer,
    BridgeMessage,
    Call,
    Dtmf,
    ErrorReply,
    Hangup,
    HangupRequest,
    PageMessage,
    Pong,
    Progress,
    Ringing,
)
from mccp.server import MccpConnection, PageGone, ServerLimits, ServerStats, serve_mccp
from mccp.session import SessionState

PAGE = b"<!doctype html><title>MCCP test page</title>"
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
CALL = Call("100", "secret", "101", SDP)
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@dataclass
class Recorder:
    """What the test handler saw, per connection."""

    received: list[PageMessage] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    finished: int = 0
    conns: list[MccpConnection] = field(default_factory=list)


Handler = Callable[[MccpConnection], Awaitable[None]]


def echoing_handler(rec: Recorder, script: dict[str, list[BridgeMessage]] | None = None) -> Handler:
    """Records page messages; answers each page message type with the scripted replies."""

    async def handler(conn: MccpConnection) -> None:
        rec.conns.append(conn)
        try:
            while True:
                msg = await conn.receive()
                rec.received.append(msg)
                for reply in (script or {}).get(msg.TYPE, []):
                    await conn.send(reply)
                if isinstance(msg, HangupRequest):
                    return
        except PageGone as exc:
            rec.gone.append(exc.reason)
        finally:
            rec.finished += 1

    return handler


@asynccontextmanager
async def running(
    handler: Handler,
    server_ctx: ssl.SSLContext | None,
    limits: ServerLimits | None = None,
    stats: ServerStats | None = None,
) -> AsyncIterator[int]:
    async def metrics() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"mccp_up 1\n"

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_mccp(
                handler,
                host="127.0.0.1",
                port=0,
                ssl_context=server_ctx,
                page=PAGE,
                limits=limits or ServerLimits(),
                routes={"/metrics": metrics},
                stats=stats,
                task_status=task_status,
            )
        )
        assert bound[0][0] == "127.0.0.1"
        yield bound[0][1]
        nursery.cancel_scope.cancel()


async def http_get(port: int, client_ctx: ssl.SSLContext | None, raw: bytes) -> bytes:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream: trio.abc.Stream = tcp
    if client_ctx is not None:
        stream = trio.SSLStream(tcp, client_ctx, server_hostname="127.0.0.1", https_compatible=True)
    await stream.send_all(raw)
    out = b""
    while chunk := await stream.receive_some():
        out += chunk
    await stream.aclose()
    return out


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()


async def recv(ws: trio_websocket.WebSocketConnection) -> BridgeMessage:
    with trio.fail_after(5):
        text = await ws.get_message()
    assert isinstance(text, str)
    return decode_bridge_untrusted(text)


# ------------------------------------------------------------------ plain HTTP


@pytest.mark.parametrize("path", ["/", "/lite.html", "/lite.html?server=x&clr=1"])
async def test_page_served(tls: tuple[ssl.SSLContext, ssl.SSLContext], path: str) -> None:
    with trio.fail_after(10):
        async with running(echoing_handler(Recorder()), tls[0]) as port:
            resp = await http_get(port, tls[1], get(path))
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: text/html; charset=utf-8" in head.lower()
    assert b"cache-control: no-cache" in head.lower()
    assert body == PAGE


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (get("/nope"), b"404"),
        (get("/mccp"), b"426"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", b"405"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"HELLO\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    ],
)
async def test_http_errors(tls: tuple[ssl.SSLContext, ssl.SSLContext], raw: bytes, status: bytes) -> None:
    stats = ServerStats()
    with trio.fail_after(10):
        async with running(echoing_handler(Recorder()), tls[0], stats=stats) as port:
            resp = await http_get(port, tls[1], raw)
            assert resp.split(b" ")[1] == status
            # the server still serves after a bad request
            assert (await http_get(port, tls[1], get("/"))).endswith(PAGE)


async def test_head_request_gets_headers_only(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    with trio.fail_after(10):
        async with running(echoing_handler(Recorder()), tls[0]) as port:
            resp = await http_get(port, tls[1], b"HEAD /lite.html HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 200 ")
    assert f"content-length: {len(PAGE)}\r\n".encode() in resp.lower()
    assert resp.endswith(b"\r\n\r\n")


async def test_extra_route(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    with trio.fail_after(10):
        async with running(echoing_handler(Recorder()), tls[0]) as port:
            resp = await http_get(port, tls[1], get("/metrics"))
    assert resp.startswith(b"HTTP/1.1 200 ")
    assert resp.endswith(b"\r\n\r\nmccp_up 1\n")


async def test_plain_listener_without_tls() -> None:
    rec = Recorder()
    with trio.fail_after(10):
        async with running(echoing_handler(rec, {"call": [Ringing()]}), None) as port:
            assert (await http_get(port, None, get("/"))).endswith(PAGE)
            async with trio_websocket.open_websocket("127.0.0.1", port, "/mccp", use_ssl=False) as ws:
                await ws.send_message(encode(CALL))
                assert await recv(ws) == Ringing()
    assert rec.received == [CALL]


async def test_slowloris_head_is_cut(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    stats = ServerStats()
    # Long enough for a TLS handshake on a loaded machine, so that the cut is the head's.
    limits = ServerLimits(handshake_timeout=1.5)
    with trio.fail_after(20):
        async with running(echoing_handler(Recorder()), tls[0], limits, stats) as port:
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            ssl_stream = trio.SSLStream(tcp, tls[1], server_hostname="127.0.0.1", https_compatible=True)
            await ssl_stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never ends the head
            start = trio.current_time()
            assert await ssl_stream.receive_some() == b""
            assert trio.current_time() - start < 10.0
            await ssl_stream.aclose()
            # a TCP client that never starts TLS is cut the same way
            tcp2 = await trio.open_tcp_stream("127.0.0.1", port)
            assert await tcp2.receive_some() == b""
            await tcp2.aclose()
            # and garbage instead of a TLS hello does not hurt the server
            tcp3 = await trio.open_tcp_stream("127.0.0.1", port)
            with suppress(trio.BrokenResourceError):  # reset: the server closes with bytes unread
                await tcp3.send_all(b"\x16\x03\x01garbage" * 10)
                await tcp3.receive_some()
            await tcp3.aclose()
            assert (await http_get(port, tls[1], get("/"))).endswith(PAGE)
    assert stats.handshake_failures >= 3
    assert stats.connections_open == 0
    assert stats.per_address == {}


# ------------------------------------------------------------------ WebSocket


@asynccontextmanager
async def page_socket(
    port: int, client_ctx: ssl.SSLContext
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    async with trio_websocket.open_websocket(
        "127.0.0.1", port, "/mccp", use_ssl=client_ctx, extra_headers=[(b"Origin", b"null")]
    ) as ws:
        yield ws


async def test_call_delivered_and_replies_sent(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    rec = Recorder()
    script: dict[str, list[BridgeMessage]] = {
        "call": [Ringing(), Answer(SDP)],
        "dtmf": [],
        "hangup": [Hangup(200, "Bye")],
    }
    with trio.fail_after(10):
        async with running(echoing_handler(rec, script), tls[0]) as port, page_socket(port, tls[1]) as ws:
            await ws.send_message(encode(CALL))
            assert await recv(ws) == Ringing()
            assert await recv(ws) == Answer(SDP)
            await ws.send_message('{"type":"ping","v":1}')
            assert await recv(ws) == Pong()  # answered by the server itself
            await ws.send_message('{"type":"dtmf","digits":"12#"}')
            await ws.send_message('{"type":"hangup"}')
            assert await recv(ws) == Hangup(200, "Bye")
            with pytest.raises(trio_websocket.ConnectionClosed):
                await recv(ws)  # the handler returned: the server closed the socket
    assert rec.received == [CALL, Dtmf("12#"), HangupRequest()]
    assert rec.conns[0].origin == "null"
    assert rec.conns[0].remote[0] == "127.0.0.1"
    assert rec.conns[0].state is SessionState.ENDED


async def test_bad_frames_get_errors_and_connection_survives(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    rec = Recorder()
    stats = ServerStats()
    with trio.fail_after(10):
        async with (
            running(echoing_handler(rec, {"call": [Ringing()]}), tls[0], stats=stats) as port,
            page_socket(port, tls[1]) as ws,
        ):
            await ws.send_message("not json")
            reply = await recv(ws)
            assert isinstance(reply, ErrorReply)
            assert reply.code == 400
            assert reply.reason.startswith("invalid JSON")
            await ws.send_message(b"\x00\x01binary")
            assert await recv(ws) == ErrorReply(415, "binary frame: MCCP uses JSON text frames")
            await ws.send_message('{"type":"dtmf","digits":"1"}')
            assert await recv(ws) == ErrorReply(409, "'dtmf' refused in state awaiting_call: no media yet")
            await ws.send_message('{"type":"call","clr":"100"}')
            assert await recv(ws) == ErrorReply(400, "'call' is missing field 'pwd'")
            await ws.send_message(encode(CALL))
            assert await recv(ws) == Ringing()
            await ws.send_message(encode(CALL))
            assert await recv(ws) == ErrorReply(409, "'call' refused: this connection already has a call")
    assert rec.received == [CALL]
    assert stats.errors_sent == 5
    assert stats.messages_dropped == 5


async def test_oversized_frame_413_then_close(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    rec = Recorder()
    with trio.fail_after(10):
        async with (
            running(echoing_handler(rec), tls[0], ServerLimits(max_frame_bytes=1000)) as port,
            page_socket(port, tls[1]) as ws,
        ):
            await ws.send_message(json.dumps({"type": "ping", "pad": "x" * 1500}))
            assert await recv(ws) == ErrorReply(413, "frame of 1527 over the 1000 limit")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await recv(ws)
            assert info.value.reason is not None
            assert info.value.reason.code == 1009
        # frames over twice the limit are refused by the WebSocket layer (1009, no MCCP error)
        async with (
            running(echoing_handler(rec), tls[0], ServerLimits(max_frame_bytes=1000)) as port,
            page_socket(port, tls[1]) as ws,
        ):
            await ws.send_message("x" * 5000)
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await recv(ws)
            assert info.value.reason is not None
            assert info.value.reason.code == 1009
    assert rec.received == []
    assert len(rec.gone) == 2


async def test_rate_limit(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    stats = ServerStats()
    limits = ServerLimits(max_messages_per_second=5.0, message_burst=10.0)
    with trio.fail_after(10):
        async with (
            running(echoing_handler(Recorder()), tls[0], limits, stats) as port,
            page_socket(port, tls[1]) as ws,
        ):
            for _ in range(30):
                await ws.send_message('{"type":"ping"}')
            replies = []
            with trio.move_on_after(0.5):
                while True:
                    replies.append(await recv(ws))
    pongs = [r for r in replies if r == Pong()]
    limited = [r for r in replies if isinstance(r, ErrorReply)]
    assert 10 <= len(pongs) <= 13  # the burst, plus what refilled meanwhile
    assert limited == [ErrorReply(429, "too many messages; dropped")]  # one 429 a second
    assert stats.rate_limited == 30 - len(pongs)


async def test_call_timeout(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    rec = Recorder()
    stats = ServerStats()
    with trio.fail_after(10):
        async with (
            running(echoing_handler(rec), tls[0], ServerLimits(call_timeout=0.3), stats) as port,
            page_socket(port, tls[1]) as ws,
        ):
            start = trio.current_time()
            assert await recv(ws) == Hangup(408, "no call request in time")
            assert 0.25 < trio.current_time() - start < 2.0
            with pytest.raises(trio_websocket.ConnectionClosed):
                await recv(ws)
            with trio.fail_after(2):
                while not rec.finished:
                    await trio.sleep(0.01)
    assert rec.gone == ["no call in time"]
    assert stats.call_timeouts == 1


async def test_per_address_cap(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    stats = ServerStats()
    limits = ServerLimits(max_connections_per_address=2)
    with trio.fail_after(10):
        async with running(echoing_handler(Recorder()), tls[0], limits, stats) as port:
            async with page_socket(port, tls[1]), page_socket(port, tls[1]):
                # The third is closed at accept: EOF before any TLS byte (its ClientHello unread).
                tcp = await trio.open_tcp_stream("127.0.0.1", port)
                assert await tcp.receive_some() == b""
                await tcp.aclose()
                with pytest.raises(trio.BrokenResourceError):
                    await http_get(port, tls[1], get("/"))
            # once they are closed, the address may connect again
            with trio.fail_after(2):
                while stats.connections_open:
                    await trio.sleep(0.01)
            assert (await http_get(port, tls[1], get("/"))).endswith(PAGE)
    assert stats.refused_per_address == 2


async def raw_ws_client(
    port: int, client_ctx: ssl.SSLContext
) -> tuple[trio.SocketStream, trio.SSLStream[trio.SocketStream], wsproto.WSConnection]:
    """A bare wsproto client: it answers nothing by itself (no pongs, no close replies)."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, client_ctx, server_hostname="127.0.0.1")
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await stream.send_all(client.send(wsproto.events.Request(host="127.0.0.1", target="/mccp")))
    while True:
        data = await stream.receive_some()
        assert data, "closed during the handshake"
        client.receive_data(bytes(data))
        if any(isinstance(e, wsproto.events.AcceptConnection) for e in client.events()):
            return tcp, stream, client


async def test_vanished_client_frees_everything(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    rec = Recorder()
    stats = ServerStats()
    with trio.fail_after(10):
        async with running(echoing_handler(rec, {"call": [Ringing()]}), tls[0], stats=stats) as port:
            tcp, stream, client = await raw_ws_client(port, tls[1])
            await stream.send_all(client.send(wsproto.events.TextMessage(encode(CALL))))
            while not rec.received:
                await trio.sleep(0.01)
            assert rec.finished == 0
            await trio.aclose_forcefully(tcp)  # RST-like: no close frame, no close_notify
            while not rec.finished:
                await trio.sleep(0.01)
            while stats.connections_open:
                await trio.sleep(0.01)
    assert rec.received == [CALL]
    assert rec.gone
    assert rec.gone[0].startswith("closed")
    assert stats.per_address == {}


async def test_silent_client_is_dropped_after_pong_timeout(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    rec = Recorder()
    stats = ServerStats()
    limits = ServerLimits(ping_interval=0.2, pong_timeout=0.3)
    with trio.fail_after(10):
        async with running(echoing_handler(rec), tls[0], limits, stats) as port:
            _tcp, stream, client = await raw_ws_client(port, tls[1])
            await stream.send_all(client.send(wsproto.events.TextMessage(encode(CALL))))
            # read (so the server is never blocked) but never answer the pings
            events: list[object] = []
            while True:
                data = await stream.receive_some()
                if not data:
                    break
                client.receive_data(bytes(data))
                events.extend(client.events())
                if any(isinstance(e, wsproto.events.CloseConnection) for e in events):
                    break
            await trio.aclose_forcefully(stream)
            while not rec.finished:
                await trio.sleep(0.01)
    assert any(isinstance(e, wsproto.events.Ping) for e in events)
    close = [e for e in events if isinstance(e, wsproto.events.CloseConnection)]
    assert close
    assert close[0].code == 1011
    assert stats.pong_timeouts == 1
    assert rec.gone == ["no pong in time"]


async def test_keepalive_pings_answered_keep_the_call(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    rec = Recorder()
    limits = ServerLimits(ping_interval=0.1, pong_timeout=0.3, call_timeout=5.0)
    with trio.fail_after(10):
        async with running(echoing_handler(rec), tls[0], limits) as port, page_socket(port, tls[1]) as ws:
            await ws.send_message(encode(CALL))
            await trio.sleep(1.0)  # ten ping rounds, answered by the client library
            await ws.send_message('{"type":"ping"}')
            assert await recv(ws) == Pong()
    assert rec.received[0] == CALL


async def test_failing_handler_does_not_stop_the_server(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    stats = ServerStats()

    async def bad_handler(conn: MccpConnection) -> None:
        msg = await conn.receive()
        if isinstance(msg, Call) and msg.clr == "666":
            raise RuntimeError("boom")
        await conn.send(Ringing())
        await conn.send(Ringing())
        await conn.send(Answer(SDP))
        with pytest.raises(LocalProtocolError, match="cannot send 'ringing' in state answered"):
            await conn.send(Ringing())
        await conn.send(Hangup(200, "done"))

    with trio.fail_after(10):
        async with running(bad_handler, tls[0], stats=stats) as port:
            async with page_socket(port, tls[1]) as ws:
                await ws.send_message(encode(Call("666", "x", "1", SDP)))
                assert await recv(ws) == Hangup(500, "bridge failure")
                with pytest.raises(trio_websocket.ConnectionClosed):
                    await recv(ws)
            async with page_socket(port, tls[1]) as ws:
                await ws.send_message(encode(CALL))
                assert [await recv(ws) for _ in range(4)] == [
                    Ringing(),
                    Ringing(),
                    Answer(SDP),
                    Hangup(200, "done"),
                ]
    assert stats.handler_failures == 1


async def test_send_after_page_left_raises_page_gone(tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    outcome: list[str] = []

    async def handler(conn: MccpConnection) -> None:
        await conn.receive()
        with suppress(PageGone):
            await conn.receive()
        try:
            await conn.send(Ringing())
        except PageGone as exc:
            outcome.append(exc.reason)

    with trio.fail_after(10):
        async with running(handler, tls[0]) as port:
            async with page_socket(port, tls[1]) as ws:
                await ws.send_message(encode(CALL))
            while not outcome:
                await trio.sleep(0.01)
    assert outcome[0].startswith("closed")


async def test_a_send_cut_by_cancellation_does_not_break_the_socket(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The call's tasks are cancelled while one of them is writing to a page that is slow to read
    (its TCP window full): the write completes (shielded, bounded by send_timeout), so the stream stays
    whole and the call's `hangup` still reaches the page (it used to get a broken socket, 1006)."""
    big = Progress(SDP + "a=x-pad:" + "x" * 30000 + "\r\n")
    sent: list[int] = []

    async def handler(conn: MccpConnection) -> None:
        await conn.receive()
        with trio.move_on_after(0.5):  # the call ends while a send is blocked mid-frame
            while True:
                await conn.send(big)
                sent.append(1)
        await conn.send(Hangup(488, "fingerprint mismatch"))

    with trio.fail_after(20):
        async with running(handler, tls[0]) as port, page_socket(port, tls[1]) as ws:
            await ws.send_message(encode(CALL))
            await trio.sleep(1.0)  # not reading: the socket buffers fill, a send blocks
            received = [await recv(ws) for _ in range(len(sent) + 1)]  # the blocked one completed
            assert received[:-1] == [big] * len(sent)
            assert received[-1] == big
            assert await recv(ws) == Hangup(488, "fingerprint mismatch")
