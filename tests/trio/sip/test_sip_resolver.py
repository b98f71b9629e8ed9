"""sip.resolver (RFC 3263 SRV then A) against a small DNS server run by the test on loopback,
and the UA placing a call to a SIP domain found through SRV."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

import trio
from sip.calls import Ended
from sip.message import Request, make_response
from sip.parser import parse_datagram_untrusted
from sip.resolver import ResolveError, SipResolver, is_ip_literal
from sip.transport import Address, SipTransport, Transport, TransportError
from sip.ua import SipUA
from sip.uri import parse_sip_uri

pytestmark = pytest.mark.timeout(20)
Zone = dict[tuple[str, str], list[str]]


async def _serve_dns(sock: trio.socket.SocketType, zone: Zone, queries: list[str]) -> None:
    while True:
        data, addr = await sock.recvfrom(4096)
        query = dns.message.from_wire(data)
        question = query.question[0]
        name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
        queries.append(f"{rdtype} {name}")
        response = dns.message.make_response(query)
        records = zone.get((name, rdtype), [])
        if records:
            response.answer.append(dns.rrset.from_text_list(question.name, 60, "IN", rdtype, records))
        elif not any(n == name for n, _ in zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        await sock.sendto(response.to_wire(), addr)


@asynccontextmanager
async def dns_server(zone: Zone) -> AsyncIterator[tuple[SipResolver, list[str]]]:
    queries: list[str] = []
    async with trio.open_nursery() as nursery:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        with sock:
            nursery.start_soon(_serve_dns, sock, zone, queries)
            yield SipResolver(nameservers=["127.0.0.1"], port=sock.getsockname()[1], timeout=1.0), queries
            nursery.cancel_scope.cancel()


ZONE: Zone = {
    ("_sip._udp.pbx.test.", "SRV"): ["20 10 5070 backup.pbx.test.", "10 10 5062 main.pbx.test."],
    ("_sip._tcp.tcponly.test.", "SRV"): ["10 10 5080 main.pbx.test."],
    ("main.pbx.test.", "A"): ["127.0.0.2"],
    ("backup.pbx.test.", "A"): ["127.0.0.3"],
    ("plain.test.", "A"): ["127.0.0.4"],
    ("pbx.test.", "A"): ["127.0.0.9"],
    ("tcponly.test.", "A"): ["127.0.0.9"],
}


async def test_locate_srv_a_fallback_and_literals() -> None:
    with trio.fail_after(10):
        async with dns_server(ZONE) as (resolver, queries):
            found = await resolver.locate(parse_sip_uri("sip:101@pbx.test"))
            assert found == [Address("127.0.0.2", 5062), Address("127.0.0.3", 5070)]  # priority order
            found = await resolver.locate(parse_sip_uri("sip:101@pbx.test:5099"))
            assert found == [Address("127.0.0.9", 5099)]  # explicit port: A only (§4.2)
            found = await resolver.locate(parse_sip_uri("sip:101@plain.test"))
            assert found == [Address("127.0.0.4", 5060)]  # no SRV: A, port 5060
            found = await resolver.locate(parse_sip_uri("sip:101@tcponly.test"))
            assert found == [Address("127.0.0.2", 5080, Transport.TCP)]  # only a TCP SRV exists
            found = await resolver.locate(parse_sip_uri("sip:101@pbx.test;transport=tcp"))
            assert found == [Address("127.0.0.9", 5060, Transport.TCP)]  # forced TCP, no _tcp SRV
            found = await resolver.locate(parse_sip_uri("sip:101@[::1]:5070"))
            assert found == [Address("::1", 5070)]
            with pytest.raises(TransportError):
                await resolver.locate(parse_sip_uri("sip:101@nowhere.test"))
            assert "SRV _sip._udp.pbx.test." in queries


async def test_unreachable_nameserver_is_unresolvable() -> None:
    with trio.fail_after(10):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))  # bound, never answers
        with sock:
            resolver = SipResolver(nameservers=["127.0.0.1"], port=sock.getsockname()[1], timeout=0.3)
            with pytest.raises(TransportError):
                await resolver.locate(parse_sip_uri("sip:101@pbx.test"))


def test_ip_literals() -> None:
    assert is_ip_literal("127.0.0.1")
    assert is_ip_literal("[::1]")
    assert not is_ip_literal("pbx.test")


async def test_ua_calls_a_domain_through_srv_and_unresolvable_is_503(nursery: trio.Nursery) -> None:
    with trio.fail_after(10):
        peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        zone: Zone = {
            ("_sip._udp.example.test.", "SRV"): [f"10 10 {peer.getsockname()[1]} sip.example.test."],
            ("sip.example.test.", "A"): ["127.0.0.1"],
        }
        async with dns_server(zone) as (resolver, _):
            transport = SipTransport("127.0.0.1", 0)
            await nursery.start(transport.run)
            ua = SipUA(transport, resolver=resolver)
            await nursery.start(ua.run)
            async with ua.call("sip:600@example.test", caller="100", sdp=b"v=0\r\n") as call:
                data, addr = await peer.recvfrom(65535)
                invite = parse_datagram_untrusted(data)
                assert isinstance(invite, Request)
                assert str(invite.uri) == "sip:600@example.test"
                await peer.sendto(bytes(make_response(invite, 603, to_tag="x")), addr)
                assert [e async for e in call.events] == [Ended(603, "Decline", "remote")]
            async with ua.call("sip:600@nowhere.test", caller="100", sdp=b"v=0\r\n") as call:
                ended = [Ended(503, "DNS lookup of nowhere.test failed: no such domain", "local")]
                assert [e async for e in call.events] == ended
        peer.close()


async def test_failures_say_why_once_and_are_not_cached(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A name that does not exist: one warning naming it and why, 503 for the call; once the name
    exists, the next call looks it up again and reaches the peer (no negative caching)."""
    with trio.fail_after(10):
        peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        zone: Zone = {}
        async with dns_server(zone) as (resolver, queries):
            with pytest.raises(ResolveError) as caught:
                await resolver.locate(parse_sip_uri("sip:600@pbx.test:5060"))
            assert str(caught.value) == "DNS lookup of pbx.test failed: no such domain"
            assert isinstance(caught.value, TransportError)  # the UA's 503 (RFC 3261 §8.1.3.1)
            transport = SipTransport("127.0.0.1", 0)
            await nursery.start(transport.run)
            ua = SipUA(transport, resolver=resolver)
            await nursery.start(ua.run)
            caplog.clear()
            caplog.set_level(logging.INFO)
            async with ua.call("sip:600@pbx.test", caller="100", sdp=b"v=0\r\n") as call:
                ended = [Ended(503, "DNS lookup of pbx.test failed: no such domain", "local")]
                assert [e async for e in call.events] == ended
            said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
            assert len([m for m in said if "DNS lookup of pbx.test failed: no such domain" in m]) == 1, said
            asked = len(queries)
            zone[("pbx.test.", "A")] = ["127.0.0.1"]
            zone[("_sip._udp.pbx.test.", "SRV")] = [f"10 10 {peer.getsockname()[1]} pbx.test."]
            async with ua.call("sip:600@pbx.test", caller="100", sdp=b"v=0\r\n") as call:
                data, addr = await peer.recvfrom(65535)
                invite = parse_datagram_untrusted(data)
                assert isinstance(invite, Request)
                await peer.sendto(bytes(make_response(invite, 486, to_tag="x")), addr)
                assert [e async for e in call.events] == [Ended(486, "Busy Here", "remote")]
            assert len(queries) > asked
        peer.close()


async def test_a_silent_name_server_times_out_within_the_bound(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(10):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))  # bound, never answers
        with sock:
            resolver = SipResolver(nameservers=["127.0.0.1"], port=sock.getsockname()[1], timeout=0.2)
            with pytest.raises(ResolveError) as caught:
                await resolver.locate(parse_sip_uri("sip:101@pbx.test"))
        assert str(caught.value).startswith("DNS lookup of pbx.test failed: timed out")
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # the caller logs it


async def test_no_reachable_name_server() -> None:
    """A name server on a port nothing listens on (what a resolv.conf pointing nowhere gives)."""
    with trio.fail_after(10):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        resolver = SipResolver(nameservers=["127.0.0.1"], port=port, timeout=1.0)
        with pytest.raises(ResolveError) as caught:
            await resolver.locate(parse_sip_uri("sip:101@pbx.test;transport=tcp"))
        assert caught.value.host == "pbx.test"
        assert caught.value.why.startswith(
            ("no name server answered", "timed out", "name server unreachable")
        )


async def test_a_dead_srv_primary_costs_one_call(nursery: trio.Nursery) -> None:
    """RFC 3263 §4.3 across calls: the primary SRV target's port is closed (ICMP error: 503 at
    once); the next call goes to the backup target instead of failing the same way."""
    with trio.fail_after(15):
        peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        zone: Zone = {
            ("_sip._udp.failover.test.", "SRV"): [
                f"10 10 {closed} dead.failover.test.",
                f"20 10 {peer.getsockname()[1]} live.failover.test.",
            ],
            ("dead.failover.test.", "A"): ["127.0.0.1"],
            ("live.failover.test.", "A"): ["127.0.0.1"],
        }
        async with dns_server(zone) as (resolver, _):
            transport = SipTransport("127.0.0.1", 0)
            await nursery.start(transport.run)
            ua = SipUA(transport, resolver=resolver, t1=5.0)  # Timer B 320 s: only ICMP can end call 1
            await nursery.start(ua.run)
            async with ua.call("sip:600@failover.test", caller="100", sdp=b"v=0\r\n") as call:
                assert [e async for e in call.events] == [Ended(503, "Service Unavailable", "local")]
            async with ua.call("sip:600@failover.test", caller="100", sdp=b"v=0\r\n") as call:
                data, addr = await peer.recvfrom(65535)
                invite = parse_datagram_untrusted(data)
                assert isinstance(invite, Request)
                await peer.sendto(bytes(make_response(invite, 486, to_tag="x")), addr)
                assert [e async for e in call.events] == [Ended(486, "Busy Here", "remote")]
        peer.close()
