"""The MCCP front over in-memory streams with a virtual clock (``autojump_clock``).

Everything timed (call timeout, keep-alive, slowloris cut, rate refill) is checked to the exact
virtual second, without sockets: the server side is :meth:`MccpFront.serve_stream`, the page side
is trio-websocket's client, or a bare wsproto client where the page must misbehave.
"""

from __future__ import annotations

import functools
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
from mccp.access import LOOPBACK, AddressSet, OriginPolicy, RouteAccess
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


async def closed_at_once(f: MccpFront, nursery: trio.Nursery, address: str, **kw: bool) -> bool:
    """Whether a new connection from ``address`` is closed without a byte and without waiting."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(functools.partial(f.serve_stream, server, (address, 40002), **kw))
    start = trio.current_time()
    with trio.move_on_after(0.5):
        data = await client.receive_some()
        await client.aclose()
        return data == b"" and trio.current_time() == start
    await client.aclose()
    return False


async def silent(
    f: MccpFront, nursery: trio.Nursery, address: str, *, proxied: bool = False
) -> trio.testing.MemorySendStream:
    """A connection that sends nothing (it stays in the handshake phase until cut)."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(functools.partial(f.serve_stream, server, (address, 40003), proxied=proxied))
    await trio.testing.wait_all_tasks_blocked()
    return client  # type: ignore[return-value]


async def test_per_address_cap_closes_at_accept_and_counts_addresses_separately(
    autojump_clock: trio.testing.MockClock,
) -> None:
    f, _ = front(ServerLimits(max_connections_per_address=1))
    async with trio.open_nursery() as nursery:
        async with page(f, nursery, "192.0.2.1"), page(f, nursery, "192.0.2.2"):
            assert await closed_at_once(f, nursery, "192.0.2.1")
            assert f.stats.per_address == {"192.0.2.1": 1, "192.0.2.2": 1}
        await trio.testing.wait_all_tasks_blocked()
        assert f.stats.per_address == {}
        async with page(f, nursery, "192.0.2.1") as ws:  # once closed, the address may come back
            await ws.send_message('{"type":"ping"}')
            assert await recv(ws) == Pong()
        nursery.cancel_scope.cancel()
    assert f.stats.refused_per_address == 1
    assert f.stats.handshakes_open == 0


async def test_handshake_cap_evicts_the_oldest_handshake(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = front(ServerLimits(max_handshakes=3))
    async with trio.open_nursery() as nursery:
        async with page(f, nursery, "192.0.2.9"):  # an open WebSocket is past its handshake
            holders = []
            for i in range(3):
                holders.append(await silent(f, nursery, f"198.51.100.{i}"))
                await trio.sleep(1.0)
            assert f.stats.handshakes_open == 3
            # A newcomer at the cap: the oldest handshake is cut at once, the newcomer is served.
            start = trio.current_time()
            async with page(f, nursery, "203.0.113.1") as ws:
                assert await holders[0].receive_some() == b""
                assert trio.current_time() == start
                await ws.send_message('{"type":"ping"}')
                assert await recv(ws) == Pong()
            assert f.stats.handshakes_evicted == 1
            # A holder that finishes its head (404) leaves the phase: the next newcomer evicts nobody.
            await holders[1].send_all(b"GET /nothing HTTP/1.1\r\nHost: b\r\n\r\n")
            await trio.testing.wait_all_tasks_blocked()
            assert f.stats.handshakes_open == 1
            async with page(f, nursery, "203.0.113.2"):
                pass
            assert f.stats.handshakes_evicted == 1
            # The last silent one is cut at its handshake timeout, and the phase is empty.
            await trio.sleep(ServerLimits().handshake_timeout + 1.0)
            assert f.stats.handshakes_open == 0
        nursery.cancel_scope.cancel()
    assert f.stats.refused_per_address == 0
    assert f.stats.handshake_failures == 2  # the evicted one and the timed-out one


async def test_handshake_cap_evicts_from_the_busiest_address(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = front(ServerLimits(max_handshakes=4))
    async with trio.open_nursery() as nursery:
        honest = await silent(f, nursery, "192.0.2.1")  # the oldest, alone on its address
        attack = [await silent(f, nursery, "198.51.100.1") for _ in range(3)]
        newcomers = [await silent(f, nursery, f"203.0.113.{i}") for i in range(2)]
        # Two newcomers evicted the two oldest handshakes of the busy address, not the honest one
        # (older, but alone on its address).
        assert f.stats.handshakes_evicted == 2
        for stream in attack[:2]:
            assert await stream.receive_some() == b""
        assert f.stats.per_address == {"192.0.2.1": 1, "198.51.100.1": 1, "203.0.113.0": 1, "203.0.113.1": 1}
        del newcomers
        await honest.send_all(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
        assert (await honest.receive_some()).startswith(b"HTTP/1.1 200 ")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://pages.example:8443", True),
        ("HTTPS://Pages.Example:8443/", True),
        ("null", True),
        ("https://bridge", True),  # same origin: the Host of the request (the bridge's own page)
        ("https://evil", False),
        ("https://bridge.evil", False),
        ("https://pages.example", False),
    ],
)
async def test_allowed_origins(autojump_clock: trio.testing.MockClock, origin: str, allowed: bool) -> None:
    f, _ = front(origins=OriginPolicy.from_list(["https://pages.example:8443", "null"]))
    async with trio.open_nursery() as nursery:
        if allowed:
            async with page(f, nursery, origin=origin) as ws:
                await ws.send_message('{"type":"ping"}')
                assert await recv(ws) == Pong()
        else:
            assert await upgrade_status(f, nursery, "192.0.2.1", origin) == 403
            assert f.stats.refused_origin == 1
        nursery.cancel_scope.cancel()


async def test_no_origin_list_lets_any_origin_in(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = front()
    async with trio.open_nursery() as nursery, page(f, nursery, origin="https://evil") as ws:
        await ws.send_message('{"type":"ping"}')
        assert await recv(ws) == Pong()
        nursery.cancel_scope.cancel()


async def get_status(
    f: MccpFront,
    nursery: trio.Nursery,
    address: str,
    path: str,
    headers: list[tuple[str, str]] = [],  # noqa: B006 (never mutated)
    *,
    proxied: bool = False,
) -> int:
    """The status of a plain GET from ``address``."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(functools.partial(f.serve_stream, server, (address, 40004), proxied=proxied))
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=path, headers=[("Host", "bridge"), *headers])
    await client.send_all(conn.send(request) or b"")
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            await client.aclose()
            return event.status_code
        assert event is h11.NEED_DATA
        data = bytes(await client.receive_some())
        assert data, "closed without an answer"
        conn.receive_data(data)


async def _metrics() -> tuple[int, str, bytes]:
    return 200, "text/plain", b"up 1\n"


@pytest.mark.parametrize(
    ("address", "authorization", "status"),
    [
        ("127.0.0.1", None, 200),
        ("127.8.9.10", None, 200),
        ("::1", None, 200),
        ("::ffff:127.0.0.1", None, 200),  # a dual-stack listener's view of IPv4 loopback
        ("192.0.2.1", None, 403),
        ("192.0.2.1", "Bearer 0123456789abcdef-token", 200),
        ("192.0.2.1", "bearer 0123456789abcdef-token", 200),
        ("192.0.2.1", "Bearer 0123456789abcdef-tokeN", 403),
        ("192.0.2.1", "Basic 0123456789abcdef-token", 403),
        ("192.0.2.1", "Bearer", 403),
    ],
)
async def test_metrics_access_by_address_or_token(
    autojump_clock: trio.testing.MockClock, address: str, authorization: str | None, status: int
) -> None:
    access = RouteAccess(AddressSet.parse(LOOPBACK), "0123456789abcdef-token")
    f, _ = front(routes={"/metrics": _metrics}, route_access=access)
    headers = [("Authorization", authorization)] if authorization else []
    async with trio.open_nursery() as nursery:
        assert await get_status(f, nursery, address, "/metrics", headers) == status
        assert await get_status(f, nursery, address, "/lite.html") == 200  # the page is for everyone
    assert f.stats.refused_route == (status == 403)


async def test_metrics_without_token_is_address_only(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = front(routes={"/metrics": _metrics}, route_access=RouteAccess(AddressSet.parse(["10.0.0.0/8"])))
    async with trio.open_nursery() as nursery:
        assert await get_status(f, nursery, "10.1.2.3", "/metrics") == 200
        assert await get_status(f, nursery, "127.0.0.1", "/metrics") == 403
        assert await get_status(f, nursery, "127.0.0.1", "/metrics", [("Authorization", "Bearer x")]) == 403


PROXY = AddressSet.parse(["10.0.0.5"])


async def test_plain_listener_serves_only_trusted_proxies(autojump_clock: trio.testing.MockClock) -> None:
    f, _ = front(ServerLimits(max_connections_per_address=1), trusted_proxies=PROXY)
    async with trio.open_nursery() as nursery:
        assert await closed_at_once(f, nursery, "192.0.2.1", proxied=True)
        assert f.stats.refused_untrusted_proxy == 1
        # The proxy itself is not held to the per-address cap: it carries every page.
        holders = [await silent(f, nursery, "10.0.0.5", proxied=True) for _ in range(3)]
        assert f.stats.per_address == {"10.0.0.5": 3}
        assert await get_status(f, nursery, "10.0.0.5", "/", proxied=True) == 200
        for holder in holders:
            await holder.aclose()
        nursery.cancel_scope.cancel()


async def test_forwarded_address_is_the_remote_and_is_capped(autojump_clock: trio.testing.MockClock) -> None:
    remotes: list[tuple[str, int]] = []

    async def handler(conn: MccpConnection) -> None:
        remotes.append(conn.remote)
        await trio.sleep_forever()

    f = MccpFront(
        handler,
        b"<html>",
        ServerLimits(max_connections_per_address=1),
        routes={"/metrics": _metrics},
        route_access=RouteAccess(AddressSet.parse(LOOPBACK)),
        trusted_proxies=PROXY,
    )
    # The client wrote the first entry itself (a lie); the proxy appended the real address.
    xff = [("X-Forwarded-For", "127.0.0.1, 198.51.100.7")]
    async with trio.open_nursery() as nursery:
        client, server = trio.testing.memory_stream_pair()
        nursery.start_soon(functools.partial(f.serve_stream, server, ("10.0.0.5", 40005), proxied=True))
        ws = await trio_websocket.wrap_client_stream(
            nursery,
            client,  # type: ignore[arg-type]
            "bridge",
            "/mccp",
            extra_headers=[(b"X-Forwarded-For", b"127.0.0.1, 198.51.100.7")],
        )
        await trio.testing.wait_all_tasks_blocked()
        assert remotes == [("198.51.100.7", 0)]
        assert f.stats.per_address == {"198.51.100.7": 1}
        # A second connection for the same page address: over its cap, 503 (the proxy shows it).
        assert await get_status(f, nursery, "10.0.0.5", "/", xff, proxied=True) == 503
        assert f.stats.refused_per_address == 1
        # /metrics judges the page's address, not the proxy's loopback one.
        other = [("X-Forwarded-For", "203.0.113.4")]
        assert await get_status(f, nursery, "10.0.0.5", "/metrics", other, proxied=True) == 403
        loop = [("X-Forwarded-For", "127.0.0.1")]
        assert await get_status(f, nursery, "10.0.0.5", "/metrics", loop, proxied=True) == 200
        # Without the header the proxy's own address counts.
        assert await get_status(f, nursery, "10.0.0.5", "/", proxied=True) == 200
        await ws.aclose()
        nursery.cancel_scope.cancel()
    assert f.stats.per_address == {}


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
        # the front (running the handler) and its ws reader; the page's side and its ws reader
        assert len(_all_tasks()) == baseline + 4
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
                try:
                    await client.send_all(head[i : i + chunk])
                except trio.BrokenResourceError:  # the front closed on a bad byte already: fine
                    break
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
    """A page whose socket accepts nothing (lockstep stream, never read) is dropped when a send to it
    takes longer than `send_timeout` (5 s)."""
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
        assert trio.current_time() - start <= 5 + 2 + 1  # send timeout, close grace
        await client.aclose()
    assert outcome == ["not reading (send timed out after 5 s)"]
    assert f.stats.connections_open == 0


async def test_open_connection_holds_no_handshake_state() -> None:
    """wsproto's handshake (its h11 connection, the upgrade request) is freed once the WebSocket
    is open, and the request head's bytes with it; the page still talks and closes normally."""
    held: list[object] = []

    async def handler(conn: MccpConnection) -> None:
        held.append(conn._ws._wsproto.handshake)
        held.append(conn._ws._stream._prefix)  # type: ignore[attr-defined]
        assert isinstance(await conn.receive(), Call)
        await conn.send(Ringing())
        assert isinstance(await conn.receive(), HangupRequest)

    f = MccpFront(handler, b"<html>")
    async with trio.open_nursery() as nursery, page(f, nursery) as ws:
        await ws.send_message(encode(CALL))
        assert await recv(ws) == Ringing()
        await ws.send_message(encode(HangupRequest()))
        with pytest.raises(trio_websocket.ConnectionClosed):
            await ws.get_message()
    handshake, prefix = held
    assert not isinstance(handshake, wsproto.handshake.H11Handshake)
    assert list(handshake.events()) == []  # type: ignore[attr-defined]
    assert prefix == b""


async def test_receive_until_returns_none_at_its_deadline_or_when_woken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The bridge's call waits for the page with its own deadline (the SIP side's silence) in the
    same wait as the connection's timers, and is woken early when that deadline moves."""
    results: list[tuple[object, float]] = []

    async def handler(conn: MccpConnection) -> None:
        assert isinstance(await conn.receive(), Call)
        start = trio.current_time()
        results.append((await conn.receive_until(start + 3.0), trio.current_time() - start))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_wake_after, conn, 2.0)
            results.append((await conn.receive_until(start + 100.0), trio.current_time() - start))
        results.append((await conn.receive_until(trio.current_time() + 100.0), 0.0))

    f = MccpFront(handler, b"<html>", ServerLimits(ping_interval=1000.0))
    async with trio.open_nursery() as nursery, page(f, nursery) as ws:
        await ws.send_message(encode(CALL))
        await trio.sleep(10.0)
        await ws.send_message(encode(HangupRequest()))
        with pytest.raises(trio_websocket.ConnectionClosed):
            await ws.get_message()
    assert results[0] == (None, pytest.approx(3.0, abs=0.01))
    assert results[1] == (None, pytest.approx(5.0, abs=0.01))
    assert results[2] == (HangupRequest(), 0.0)


async def _wake_after(conn: MccpConnection, seconds: float) -> None:
    await trio.sleep(seconds)
    conn.wake()
