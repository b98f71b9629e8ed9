"""SIP over TLS between two of our transports on loopback (real TLS, trustme certificates)."""

from __future__ import annotations

import ssl

import pytest
import trustme

import trio
from sip.calls import Answered, Ended, IncomingCall
from sip.transport import SipTransport, Transport
from sip.ua import SipUA

pytestmark = pytest.mark.timeout(20)
SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


async def _server(nursery: trio.Nursery, ca: trustme.CA, seen: list[IncomingCall]) -> SipTransport:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)

    async def on_invite(call: IncomingCall) -> None:
        seen.append(call)
        await call.answer(SDP)
        await call.ended.wait()

    transport = SipTransport("127.0.0.1", 0, tls_server_context=server_ctx)
    await nursery.start(transport.run)
    await nursery.start(SipUA(transport, on_invite=on_invite).run)
    return transport


async def _client(nursery: trio.Nursery, ca: trustme.CA | None) -> SipUA:
    client_ctx = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(client_ctx)
    transport = SipTransport("127.0.0.1", 0, tls_client_context=client_ctx)
    await nursery.start(transport.run)
    ua = SipUA(transport)
    await nursery.start(ua.run)
    return ua


@pytest.mark.parametrize("uri", ["sip:600@127.0.0.1:{port};transport=tls", "sips:600@127.0.0.1:{port}"])
async def test_call_over_tls(nursery: trio.Nursery, uri: str) -> None:
    ca = trustme.CA()
    seen: list[IncomingCall] = []
    with trio.fail_after(10):
        server = await _server(nursery, ca, seen)
        ua = await _client(nursery, ca)
        async with ua.call(uri.format(port=server.tls_port), caller="100", sdp=SDP) as call:
            event = None
            async for event in call.events:
                if isinstance(event, Answered | Ended):
                    break
            assert event == Answered(SDP)
            invite = seen[0].invite
            assert invite.top_via.transport == "TLS"
            assert invite.top_via.port == ua.transport.port_for(Transport.TLS)
            assert seen[0].source.transport is Transport.TLS
            await call.hangup()
        assert call.ended == Ended(200, "Hangup", "local")
        with trio.fail_after(2):
            await seen[0].ended.wait()  # the BYE came over TLS too
        assert server.stats.tcp_accepted == 1  # one TLS connection, reused for the BYE
        assert ua.transport.stats.tcp_connected == 1


async def test_untrusted_server_certificate_ends_503(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        server = await _server(nursery, trustme.CA(), [])
        ua = await _client(nursery, trustme.CA())  # trusts another CA
        target = f"sip:600@127.0.0.1:{server.tls_port};transport=tls"
        async with ua.call(target, caller="100", sdp=SDP) as call:
            assert [e async for e in call.events] == [Ended(503, "Service Unavailable", "local")]
        assert ua.transport.stats.tls_failures == 1


async def test_tls_without_client_context_ends_503(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        server = await _server(nursery, trustme.CA(), [])
        transport = SipTransport("127.0.0.1", 0)
        await nursery.start(transport.run)
        ua = SipUA(transport)
        await nursery.start(ua.run)
        async with ua.call(f"sips:600@127.0.0.1:{server.tls_port}", caller="100", sdp=SDP) as call:
            assert [e async for e in call.events] == [Ended(503, "Service Unavailable", "local")]
