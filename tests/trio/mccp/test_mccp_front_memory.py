"""The MCCP front over in-memory streams with a virtual clock (``autojump_clock``).

Everything timed (call timeout, keep-alive, slowloris cut, rate refill) is checked to the exact
virtual second, without sockets: the server side is :meth:`MccpFront.serve_stream`, the page side
is trio-websocket's client, or a bare wsproto client where the page must misbehave.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h11
import pytest
import trio.testing
import trio_websocket
import wsproto
import wsproto.events
from hypothesis import given, settings
from hypothesis import strategies as st

import trio
from mccp.codec import decode_bridge_untrusted, encode
from mccp.messages import BridgeMessage, Call, ErrorReply, Hangup, HangupRequest, Pong, Ringing
from mccp.server import MccpConnection, MccpFront, PageGone, ServerLimits

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
CALL = Call("100", "secret", "101", SDP)
pytestmark = pytest.mark.timeout(20)


class Bridge:
    """A handler that rings on `call` and records how each connection ended."""

    def __init__(self) -> None:
        self.ended: list[str] = []

    async def __call__(self, conn: MccpConnection) -> None:
        try:
            while True:
                msg = await conn.receive()
                if isinstance(msg, Call):
                    await conn.send(Ringing())
                if isinstance(msg, HangupRequest):
                    self.ended.append("page hangup")
                    return
        except PageGone as exc:
            self.ended.append(exc.reason)


def front(limits: ServerLimits | None = None, **kw: object) -> tuple[MccpFront, Bridge]:
    bridge = Bridge()
    return MccpFront(bridge, b"<html>", limits or ServerLimits(), **kw), bridge  # type: ignore[arg-type]


@asynccontextmanager
async def page(
    f: MccpFront, nursery: trio.Nursery, address: str = "192.0.2.1", origin: str = "null"
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(f.serve_stream, server, (address, 40000))
    ws = await _connect(nursery, client, origin)
    try:
        yield ws
    finally:
        await ws.aclose()


async def _connect(
    nursery: trio.Nursery, stream: trio.abc.Stream, origin: str
) -> trio_websocket.WebSocketConnection:
    # trio-websocket types the stream as a socket or TLS stream; any trio Stream works.
    return await trio_websocket.wrap_client_stream(
        nursery,
        stream,  # type: ignore[arg-type]
        "bridge",
        "/mccp",
        extra_headers=[(b"Origin", origin.encode())],
    )


async def upgrade_status(f: MccpFront, nursery: trio.Nursery, address: str, origin: str) -> int:
    """The HTTP status a refused upgrade gets (read with h11, as a browser would)."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(f.serve_stream, server, (address, 40001))
    conn = h11.Connection(h11.CLIENT)
    headers = [
        ("Host", "bridge"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
        ("Origin", origin),
    ]
    await client.send_all(conn.send(h11.Request(method="GET", target="/mccp", headers=headers)) or b"")
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response | h11.InformationalResponse):
            await client.aclose()
            return event.status_code
        assert event is h11.NEED_DATA
        conn.receive_data(bytes(await client.receive_some()))


async def recv(ws: trio_websocket.WebSocketConnection) -> BridgeMessage:
    text = await ws.get_message()
    assert isinstance(text, str)
    return decode_bridge_untrusted(text)


async def test_call_timeout_to_the_second(autojump_clock: trio.testing.MockClock) -> None:
    f, bridge = front()
    async with trio.open_nursery() as nursery, page(f, nursery) as ws:
        start = trio.current_time()
        assert await recv(ws) == Hangup(408, "no call request in time")
        assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)
        with pytest.raises(trio_websocket.ConnectionClosed):
            await recv(ws)
    assert bridge.ended == ["no call in time"]
    assert f.stats.call_timeouts == 1
    assert f.stats.connections_open == 0


async def test_answered_pings_keep_an_idle_call_for_hours(autojump_clock: trio.testing.MockClock) -> None:
    f, bridge = front()
    async with trio.open_nursery() as nursery, page(f, nursery) as ws:
        await ws.send_message(encode(CALL))
        assert await recv(ws) == Ringing()
        await trio.sleep(3 * 3600)  # 720 ping rounds, answered by the client library
        await ws.send_message('{"type":"ping"}')
        assert await recv(ws) == Pong()
        await ws.send_message('{"type":"hangup"}')
        with pytest.raises(trio_websocket.ConnectionClosed):
            await recv(ws)
    assert bridge.ended == ["page hangup"]
    assert f.stats.pong_timeouts == 0


async def test_unanswered_ping_ends_the_call_after_25_s(autojump_clock: trio.testing.MockClock) -> None:
    f, bridge = front()
    client, server = trio.testing.memory_stream_pair()
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(f.serve_stream, server, ("192.0.2.1", 40000))
        await client.send_all(ws.send(wsproto.events.Request(host="bridge", target="/mccp")))
        events: list[wsproto.events.Event] = []
        start = trio.current_time()
        sent_call = False
        while not any(isinstance(e, wsproto.events.CloseConnection) for e in events):
            data = await client.receive_some()
            assert data
            ws.receive_data(bytes(data))
            events.extend(ws.events())
            if not sent_call and any(isinstance(e, wsproto.events.AcceptConnection) for e in events):
                await client.send_all(ws.send(wsproto.events.TextMessage(encode(CALL))))
                sent_call = True
        closed_at = trio.current_time() - start
        await client.aclose()
    # ping at 15 s, no pong by 25 s: close 1011
    assert closed_at == pytest.approx(25.0, abs=0.01)
    assert [type(e).__name__ for e in events if not isinstance(e, wsproto.events.Message)] == [
        "AcceptConnection",
        "Ping",
        "CloseConnection",
    ]
    close = events[-1]
    assert isinstance(close, wsproto.events.CloseConnection)
    assert close.code == 1011
    assert bridge.ended == ["no pong in time"]


async def test_slowloris_is_cut_at_the_handshake_timeout(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = front()
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(f.serve_stream, server, ("192.0.2.1", 40000))
        start = trio.current_time()
        for byte in b"GET / HTTP/1.1\r\nHost: bridge\r\n":  # one byte a second, never finished
            await client.send_all(bytes([byte]))
            await trio.sleep(1.0 if trio.current_time() - start < 9.0 else 0.0)
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)
    assert f.stats.handshake_failures == 1
    assert f.stats.per_address == {}


async def test_per_address_cap_counts_addresses_separately(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = front(ServerLimits(max_connections_per_address=1))
    async with trio.open_nursery() as nursery:
        async with page(f, nursery, "192.0.2.1"), page(f, nursery, "192.0.2.2"):
            assert await upgrade_status(f, nursery, "192.0.2.1", "null") == 503
        nursery.cancel_scope.cancel()
    assert f.stats.refused_busy == 1


@pytest.mark.parametrize(
    ("origin", "allowed"), [("https://bridge:5062", True), ("null", True), ("https://evil", False)]
)
async def test_allowed_origins(autojump_clock: trio.testing.MockClock, origin: str, allowed: bool) -> None:
    f, _ = front(allowed_origins=frozenset({"https://bridge:5062", "null"}))
    async with trio.open_nursery() as nursery:
        if allowed:
            async with page(f, nursery, origin=origin) as ws:
                await ws.send_message('{"type":"ping"}')
                assert await recv(ws) == Pong()
        else:
            assert await upgrade_status(f, nursery, "192.0.2.1", origin) == 403
        nursery.cancel_scope.cancel()


async def test_rate_limit_refills(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = front()  # 20/s, burst 40
    async with trio.open_nursery() as nursery, page(f, nursery) as ws:

        async def burst(n: int) -> list[BridgeMessage]:
            for _ in range(n):
                await ws.send_message('{"type":"ping"}')
            out = []
            with trio.move_on_after(0.01):  # virtual: every reply is in by then
                while True:
                    out.append(await recv(ws))
            return out

        first = await burst(45)
        assert first.count(Pong()) == 40
        assert first.count(ErrorReply(429, "too many messages; dropped")) == 1
        await trio.sleep(1.0)  # 20 tokens back, and the next 429 may be sent
        second = await burst(25)
        assert second.count(Pong()) == 20
        assert second.count(ErrorReply(429, "too many messages; dropped")) == 1
    assert f.stats.rate_limited == 10


def _all_tasks() -> list[trio.lowlevel.Task]:
    tasks, todo = [], [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        assert task is not None
        tasks.append(task)
        todo.extend(t for n in task.child_nurseries for t in n.child_tasks)
    return tasks


async def test_vanished_page_leaves_no_task(autojump_clock: trio.testing.MockClock) -> None:
    f, bridge = front()
    async with trio.open_nursery() as nursery:
        await trio.testing.wait_all_tasks_blocked()
        baseline = len(_all_tasks())
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(f.serve_stream, server, ("192.0.2.1", 40000))
        inner_cancel = trio.CancelScope()

        async def page_side() -> None:
            with inner_cancel:
                async with trio.open_nursery() as client_nursery:
                    ws = await _connect(client_nursery, client, "null")
                    await ws.send_message(encode(CALL))
                    assert await recv(ws) == Ringing()
                    await trio.sleep_forever()

        nursery.start_soon(page_side)
        await trio.sleep(1.0)
        assert len(_all_tasks()) > baseline + 4  # front, reader, keepalive, handler, ws reader...
        inner_cancel.cancel()
        await trio.aclose_forcefully(client)  # the page vanishes: no close frame
        await trio.sleep(1.0)
        await trio.testing.wait_all_tasks_blocked()
        assert len(_all_tasks()) == baseline
    assert bridge.ended
    assert bridge.ended[0].startswith("closed")
    assert f.stats.connections_open == 0
    assert f.stats.per_address == {}


_heads = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, target, extra: f"{method} {target} HTTP/1.1\r\nHost: b\r\n{extra}\r\n".encode(),
        st.sampled_from(["GET", "POST", "HEAD", "G\x00T"]),
        st.sampled_from(["/", "/lite.html", "/mccp", "/x", "*", "/%00"]),
        st.sampled_from(
            ["", "Upgrade: websocket\r\n", "Connection: Upgrade\r\nUpgrade: websocket\r\n", "X\r\n"]
        ),
    ),
)


@settings(max_examples=60, deadline=None)
@given(_heads, st.integers(min_value=1, max_value=64))
def test_any_request_bytes_get_an_answer_or_a_close(head: bytes, chunk: int) -> None:
    async def run() -> bytes:
        f, _ = front(ServerLimits(call_timeout=1.0))
        client, server = trio.testing.memory_stream_pair()
        out = b""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(f.serve_stream, server, ("192.0.2.1", 40000))
            for i in range(0, len(head), chunk):
                await client.send_all(head[i : i + chunk])
            with trio.move_on_after(60):
                while data := await client.receive_some():
                    out += data
            await client.aclose()
        assert f.stats.connections_open == 0
        assert f.stats.handler_failures == 0
        return out

    out = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    assert out == b"" or out.startswith(b"HTTP/1.1 ")


_frames = st.lists(
    st.one_of(
        st.text(max_size=80),
        st.binary(max_size=40),
        st.sampled_from(['{"type":"dtmf","digits":"1"}', '{"type":"call"}', '{"type":"hangup","v":3}', "{}"]),
    ),
    max_size=20,
)


@settings(max_examples=40, deadline=None)
@given(_frames)
def test_any_frames_are_answered_and_the_connection_survives(frames: list[str | bytes]) -> None:
    async def run() -> None:
        f, bridge = front()
        async with trio.open_nursery() as nursery, page(f, nursery) as ws:
            for frame in frames:
                await ws.send_message(frame)
                reply = await recv(ws)  # every one of these is refused with an error
                assert isinstance(reply, ErrorReply)
                assert reply.code in (400, 409, 415, 505)
            await ws.send_message('{"type":"ping"}')
            assert await recv(ws) == Pong()
        assert f.stats.errors_sent == len(frames)
        assert f.stats.handler_failures == 0
        assert bridge.ended == ["closed (1000)"]

    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_page_that_stops_reading_cannot_block_the_bridge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A page whose socket accepts nothing (lockstep stream, never read) is dropped by the keep-alive."""
    outcome: list[str] = []
    call_seen = trio.Event()

    async def pushy_handler(conn: MccpConnection) -> None:
        await conn.receive()
        call_seen.set()
        try:
            while True:  # blocks as soon as the page stops reading
                await conn.send(Ringing())
        except PageGone as exc:
            outcome.append(exc.reason)

    f = MccpFront(pushy_handler, b"<html>")
    client, server = trio.testing.lockstep_stream_pair()
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(f.serve_stream, server, ("192.0.2.1", 40000))
        await client.send_all(ws.send(wsproto.events.Request(host="bridge", target="/mccp")))
        while not any(isinstance(e, wsproto.events.AcceptConnection) for e in ws.events()):
            ws.receive_data(bytes(await client.receive_some()))
        await client.send_all(ws.send(wsproto.events.TextMessage(encode(CALL))))
        await call_seen.wait()
        start = trio.current_time()
        with trio.fail_after(60):
            while not outcome:
                await trio.sleep(0.5)
        assert trio.current_time() - start <= 15 + 10 + 2 + 1  # ping, pong timeout, close grace
        await client.aclose()
    assert outcome == ["no pong in time"]
    assert f.stats.pong_timeouts == 1
    assert f.stats.connections_open == 0
