"""The front's own WebSocket layer (issue 6's memory diet): the bytes after the upgrade request are
the WebSocket's, and `MccpConnection.receive_until` shares the connection's wait with the caller's
deadline and wake-ups (no cancel scope of the caller's own), losing no message."""

from __future__ import annotations

import math

import pytest
import trio.testing
import wsproto
import wsproto.events
from wsproto.frame_protocol import FrameProtocol

import trio
from mccp.codec import decode_bridge_untrusted, encode
from mccp.messages import Call, Ringing
from mccp.server import MccpConnection, MccpFront, PageGone

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
CALL = Call("100", "secret", "101", SDP)
pytestmark = pytest.mark.timeout(20)


async def _until_closed(client: trio.abc.Stream, ws: wsproto.WSConnection) -> list[wsproto.events.Event]:
    events: list[wsproto.events.Event] = []
    while not any(isinstance(e, wsproto.events.CloseConnection) for e in events):
        data = await client.receive_some()
        if not data:
            break
        ws.receive_data(bytes(data))
        events.extend(ws.events())
    return events


async def test_a_frame_sent_with_the_upgrade_request_is_delivered() -> None:
    got: list[object] = []

    async def handler(conn: MccpConnection) -> None:
        got.append(await conn.receive())
        await conn.send(Ringing())

    front = MccpFront(handler, b"<html>")
    client, server = trio.testing.memory_stream_pair()
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    # The page's first frame in the same write as its request head (a masked client frame).
    frame = FrameProtocol(client=True, extensions=[]).send_data(encode(CALL), fin=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(front.serve_stream, server, ("192.0.2.1", 40000))
        await client.send_all(ws.send(wsproto.events.Request(host="bridge", target="/mccp")) + frame)
        events = await _until_closed(client, ws)
    assert got == [CALL]
    texts = [e.data for e in events if isinstance(e, wsproto.events.TextMessage)]
    assert [decode_bridge_untrusted(t) for t in texts if isinstance(t, str)] == [Ringing()]
    assert isinstance(events[0], wsproto.events.AcceptConnection)
    assert front.stats.connections_open == 0


async def test_receive_until_returns_at_its_deadline_and_when_woken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    marks: list[tuple[str, float]] = []
    conns: list[MccpConnection] = []

    async def handler(conn: MccpConnection) -> None:
        conns.append(conn)
        t0 = trio.current_time()
        assert await conn.receive_until(t0 + 3.0) is None  # nothing came: its deadline
        marks.append(("deadline", trio.current_time() - t0))
        conn.wake()
        assert await conn.receive_until(math.inf) is None  # woken before the wait: at once
        marks.append(("woken before", trio.current_time() - t0))
        assert await conn.receive_until(math.inf) is None  # woken by another task at 4 s
        marks.append(("woken during", trio.current_time() - t0))
        message = await conn.receive_until(t0 + 60.0)  # the call, sent at 5 s, is not lost
        marks.append(("message", trio.current_time() - t0))
        assert message == CALL
        await conn.send(Ringing())
        with pytest.raises(PageGone):
            await conn.receive()

    front = MccpFront(handler, b"<html>")
    client, server = trio.testing.memory_stream_pair()
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(front.serve_stream, server, ("192.0.2.1", 40000))
        await client.send_all(ws.send(wsproto.events.Request(host="bridge", target="/mccp")))
        ws.receive_data(bytes(await client.receive_some()))
        assert [type(e) for e in ws.events()] == [wsproto.events.AcceptConnection]
        await trio.sleep(4.0)
        conns[0].wake()
        await trio.sleep(1.0)
        await client.send_all(ws.send(wsproto.events.TextMessage(encode(CALL))))
        events: list[wsproto.events.Event] = []
        while not any(isinstance(e, wsproto.events.TextMessage) for e in events):
            ws.receive_data(bytes(await client.receive_some()))
            events.extend(ws.events())
        await client.send_all(ws.send(wsproto.events.CloseConnection(1000)))
        await _until_closed(client, ws)
    assert [name for name, _ in marks] == ["deadline", "woken before", "woken during", "message"]
    assert [at for _, at in marks] == pytest.approx([3.0, 3.0, 4.0, 5.0], abs=0.01)
