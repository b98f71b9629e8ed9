"""sip.transport on loopback: UDP and TCP in, out, bad input, Via stamping (RFC 3581), idle close."""

from __future__ import annotations

import functools
import socket

import pytest

import trio
from sip.message import Request, Response, make_response
from sip.transport import Address, SipTransport, Transport, TransportError

INVITE = (
    b"OPTIONS sip:600@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.1.2.3:5999;branch=z9hG4bKabc;rport\r\n"
    b"Max-Forwards: 70\r\nFrom: <sip:100@127.0.0.1>;tag=f1\r\nTo: <sip:600@127.0.0.1>\r\n"
    b"Call-ID: c1@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


async def _start(nursery: trio.Nursery, **kw: object) -> SipTransport:
    t = SipTransport("127.0.0.1", 0, **kw)  # type: ignore[arg-type]
    started: SipTransport = await nursery.start(t.run)
    return started


async def test_udp_request_is_stamped_and_answered_to_rport() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery)
            assert t.port != 0
            peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await peer.bind(("127.0.0.1", 0))
            await peer.sendto(b"\r\n\r\n", ("127.0.0.1", t.port))  # keep-alive: ignored
            await peer.sendto(b"garbage\r\n\r\n", ("127.0.0.1", t.port))  # dropped, counted
            await peer.sendto(INVITE, ("127.0.0.1", t.port))
            inbound = await t.inbound.receive()
            req = inbound.message
            assert isinstance(req, Request)
            port = peer.getsockname()[1]
            assert inbound.source == Address("127.0.0.1", port, Transport.UDP)
            via = req.top_via
            assert (via.received, via.rport) == ("127.0.0.1", port)
            dest = t.response_address(req, inbound.source)
            assert dest == Address("127.0.0.1", port)
            await t.send(bytes(make_response(req, 200, to_tag="t")), dest)
            data = await peer.recv(65535)
            assert data.startswith(b"SIP/2.0 200 OK\r\n")
            assert f"rport={port}".encode() in data
            assert b"received=127.0.0.1" in data
            assert (t.stats.bad_datagrams, t.stats.keepalives, t.stats.received) == (1, 1, 1)
            peer.close()
            nursery.cancel_scope.cancel()


async def test_response_without_rport_goes_to_via_port() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery, tcp=False)
            peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await peer.bind(("127.0.0.1", 0))
            await peer.sendto(INVITE.replace(b";rport", b""), ("127.0.0.1", t.port))
            inbound = await t.inbound.receive()
            assert isinstance(inbound.message, Request)
            assert t.response_address(inbound.message, inbound.source) == Address("127.0.0.1", 5999)
            peer.close()
            nursery.cancel_scope.cancel()


async def test_tcp_in_reply_on_same_connection_bad_message_400_and_close() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", t.port)
            tcp_invite = INVITE.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
            await stream.send_all(b"\r\n\r\n" + tcp_invite[:40])  # ping, then a message in two pieces
            assert await stream.receive_some(100) == b"\r\n"  # pong
            await stream.send_all(tcp_invite[40:])
            inbound = await t.inbound.receive()
            assert inbound.source.transport is Transport.TCP
            assert isinstance(inbound.message, Request)
            await t.send(
                bytes(make_response(inbound.message, 486)),
                t.response_address(inbound.message, inbound.source),
            )
            reply = await stream.receive_some(65535)
            assert reply.startswith(b"SIP/2.0 486 Busy Here\r\n")
            # No Content-Length on a stream: answered 400 (head readable), the stream goes on.
            await stream.send_all(tcp_invite.replace(b"Content-Length: 0\r\n", b""))
            reply = await stream.receive_some(65535)
            assert reply.startswith(b"SIP/2.0 400 ")
            # An absurd Content-Length is fatal: the connection is closed.
            await stream.send_all(tcp_invite.replace(b"Content-Length: 0", b"Content-Length: 99999999"))
            rest = b""
            while chunk := await stream.receive_some(65535):
                rest += chunk
            assert t.stats.bad_stream_messages == 2
            await stream.aclose()
            nursery.cancel_scope.cancel()


async def test_tcp_out_reuses_connection_and_closes_when_idle() -> None:
    accepted: list[trio.SocketStream] = []
    got = trio.Event()
    received = bytearray()

    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        async for chunk in stream:
            received.extend(chunk)
            if received.count(b"\r\n\r\n") >= 2:
                got.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            t = await _start(nursery, tcp_idle_timeout=0.3)
            dest = Address("127.0.0.1", port, Transport.TCP)
            await t.send(INVITE, dest)
            await t.send(INVITE, dest)
            await got.wait()
            assert len(accepted) == 1
            assert t.stats.tcp_connected == 1
            await trio.sleep(0.6)
            assert t.stats.tcp_closed == 1
            await t.send(INVITE, dest)  # reconnects
            assert t.stats.tcp_connected == 2
            nursery.cancel_scope.cancel()


async def test_send_errors_raise_transport_error() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery)
            with pytest.raises(TransportError):
                await t.send(INVITE, Address("127.0.0.1", 1, Transport.TCP))  # refused
            with pytest.raises(TransportError):
                await t.send(INVITE, Address("no-such-host.invalid", 5060, Transport.UDP))
            assert t.stats.send_errors == 2
            nursery.cancel_scope.cancel()


async def test_response_is_delivered_unchanged() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery)
            peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await peer.bind(("127.0.0.1", 0))
            resp = INVITE.split(b"\r\n", 1)[1]
            await peer.sendto(b"SIP/2.0 180 Ringing\r\n" + resp, ("127.0.0.1", t.port))
            inbound = await t.inbound.receive()
            assert isinstance(inbound.message, Response)
            assert inbound.message.status == 180
            assert inbound.message.top_via.received is None
            peer.close()
            nursery.cancel_scope.cancel()


def _closed_udp_port() -> int:
    """A loopback UDP port nobody listens on (bound, read, closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_icmp_port_unreachable_is_reported_with_its_destination() -> None:
    """RFC 3261 §18.4: the ICMP port unreachable for a datagram comes back as `Unreachable(dest)`;
    the reader goes on (a request after it is delivered) and the next send is not blamed for it."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery, tcp=False)
            closed = _closed_udp_port()
            await t.send(INVITE, Address("127.0.0.1", closed))
            event = await t.unreachable.receive()
            assert event.dest == Address("127.0.0.1", closed, Transport.UDP)
            assert event.reason == "Connection refused"
            assert t.stats.icmp_errors == 1
            # a second one, and a send meanwhile to a live peer that must not fail for it
            peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await peer.bind(("127.0.0.1", 0))
            await t.send(INVITE, Address("127.0.0.1", closed))
            await trio.sleep(0.05)
            await t.send(INVITE, Address("127.0.0.1", peer.getsockname()[1]))
            assert await peer.recv(65535) == INVITE
            assert (await t.unreachable.receive()).dest.port == closed
            await peer.sendto(INVITE, ("127.0.0.1", t.port))
            inbound = await t.inbound.receive()
            assert isinstance(inbound.message, Request)
            assert t.stats.send_errors == 0
            peer.close()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "via_params",
    ["received=127.0.0.77", "received=127.0.0.77;rport=6000"],
    ids=["received", "received+rport"],
)
async def test_a_request_cannot_choose_where_its_responses_go(via_params: str) -> None:
    """`received` (and a filled-in `rport`) are the server's to write (RFC 3261 §18.2.1, RFC 3581 §4):
    a sender that writes them itself must not get the responses reflected to another host."""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            t = await _start(nursery)
            peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            await peer.bind(("127.0.0.4", 0))
            port = peer.getsockname()[1]
            request = INVITE.replace(
                b"Via: SIP/2.0/UDP 10.1.2.3:5999;branch=z9hG4bKabc;rport",
                f"Via: SIP/2.0/UDP 127.0.0.4:{port};branch=z9hG4bKabc;{via_params}".encode(),
            )
            await peer.sendto(request, ("127.0.0.1", t.port))
            inbound = await t.inbound.receive()
            assert isinstance(inbound.message, Request)
            dest = t.response_address(inbound.message, inbound.source)
            assert dest.host == "127.0.0.4"
            assert dest.port == port
            nursery.cancel_scope.cancel()
