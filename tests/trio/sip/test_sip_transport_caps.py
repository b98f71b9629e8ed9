"""sip.transport's caps on inbound TCP (docs/security.md 6b): connections per source IP and in all,
and the deadline for a message (and for an accepted connection's first message), on loopback."""

from __future__ import annotations

import ssl

import pytest
import trustme

import trio
from sip.message import Request
from sip.transport import SipTransport

OPTIONS = (
    b"OPTIONS sip:600@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKcap%d\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:100@127.0.0.1>;tag=f1\r\nTo: <sip:600@127.0.0.1>\r\n"
    b"Call-ID: cap%d@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)

pytestmark = pytest.mark.timeout(30)


def options(n: int) -> bytes:
    return OPTIONS % (n, n)


async def _start(nursery: trio.Nursery, **kw: object) -> SipTransport:
    t = SipTransport("127.0.0.1", 0, udp=False, **kw)  # type: ignore[arg-type]
    started: SipTransport = await nursery.start(t.run)
    return started


async def connect_from(source: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    """True once the transport closed the connection (EOF or reset), False if it sends data."""
    try:
        return await stream.receive_some(4096) == b""
    except trio.BrokenResourceError:
        return True


async def received_message(t: SipTransport, call_id: str) -> None:
    while True:
        inbound = await t.inbound.receive()
        if isinstance(inbound.message, Request) and inbound.message.call_id == call_id:
            return


async def test_connections_per_address_are_capped_and_the_count_comes_back() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery, max_tcp_per_address=5)
            kept = [await connect_from("127.0.0.1", t.port) for _ in range(5)]
            extra = [await connect_from("127.0.0.1", t.port) for _ in range(3)]
            for stream in extra:
                assert await closed_by_peer(stream)
            assert t.stats.tcp_refused_per_address == 3
            # Another address is not affected, and the capped ones still work.
            other = await connect_from("127.0.0.2", t.port)
            await other.send_all(options(1))
            await received_message(t, "cap1@x")
            await kept[0].send_all(options(2))
            await received_message(t, "cap2@x")
            # Closing some gives their places back.
            for stream in kept[:2]:
                await stream.aclose()
            while t.stats.tcp_closed < 2:
                await trio.sleep(0.01)
            again = await connect_from("127.0.0.1", t.port)
            await again.send_all(options(3))
            await received_message(t, "cap3@x")
            assert t.stats.tcp_refused_per_address == 3
            for stream in [*kept[2:], *extra, other, again]:
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


async def test_connections_in_all_are_capped() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery, max_tcp_connections=4)
            streams = [await connect_from(f"127.0.0.{10 + i}", t.port) for i in range(4)]
            over = await connect_from("127.0.0.20", t.port)
            assert await closed_by_peer(over)
            assert (t.stats.tcp_refused, t.stats.tcp_refused_per_address) == (1, 0)
            await streams[3].send_all(options(4))
            await received_message(t, "cap4@x")
            for stream in [*streams, over]:
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


async def test_a_trickled_head_is_cut_at_the_deadline() -> None:
    """One byte every 20 ms keeps the idle timer (10 s) from ever firing; the head deadline
    (0.3 s from the first byte) closes the connection anyway."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery, tcp_head_timeout=0.3, tcp_idle_timeout=10.0)
            stream = await connect_from("127.0.0.1", t.port)
            head = options(5)
            sent = 0
            with trio.move_on_after(5):
                try:
                    for byte in head[:-4]:  # never the end of the head
                        await stream.send_all(bytes([byte]))
                        sent += 1
                        await trio.sleep(0.02)
                except trio.BrokenResourceError:
                    pass
            assert await closed_by_peer(stream)
            assert sent < len(head) - 4, "the trickle was never cut"
            assert t.stats.tcp_head_timeouts == 1
            assert t.stats.received == 0
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


async def test_a_silent_connection_is_closed_one_that_spoke_is_kept() -> None:
    """An accepted connection that never sends a message is closed at the head deadline; one
    that sent a message first is only subject to the idle timer (it is still served after)."""
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery, tcp_head_timeout=2.0, tcp_idle_timeout=30.0)
            silent = await connect_from("127.0.0.1", t.port)
            spoke = await connect_from("127.0.0.1", t.port)
            # a message in two pieces, well within the deadline, then a keep-alive in two pieces
            await spoke.send_all(options(6)[:30])
            await trio.sleep(0.05)
            await spoke.send_all(options(6)[30:] + b"\r\n")
            await received_message(t, "cap6@x")
            await trio.sleep(0.05)
            await spoke.send_all(b"\r\n")
            assert await closed_by_peer(silent)
            assert t.stats.tcp_head_timeouts == 1
            await trio.sleep(2.5)  # beyond the head deadline: nothing is pending on `spoke`
            await spoke.send_all(options(7))
            await received_message(t, "cap7@x")
            assert t.stats.tcp_head_timeouts == 1
            assert t.stats.keepalives >= 1
            for stream in (silent, spoke):
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


async def test_a_tls_handshake_that_never_ends_is_cut_at_the_deadline() -> None:
    """On the TLS listener the first message's deadline covers the handshake: a client that opens
    TCP and sends half a ClientHello is closed; the per-address cap counts TLS connections too."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            t = await _start(
                nursery, tls_server_context=server_ctx, tcp_head_timeout=0.3, max_tcp_per_address=2
            )
            stalled = await connect_from("127.0.0.1", t.tls_port)
            await stalled.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
            second = await connect_from("127.0.0.1", t.tls_port)
            third = await connect_from("127.0.0.1", t.tls_port)
            assert await closed_by_peer(third)  # over the cap of 2
            assert await closed_by_peer(stalled)
            assert await closed_by_peer(second)  # silent: no handshake at all
            assert t.stats.tcp_head_timeouts == 2
            assert t.stats.tcp_refused_per_address == 1
            for stream in (stalled, second, third):
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()
