"""sip.ua's own tasks survive a bug (docs/security.md 3d): an exception while due timers are handled
or while an ICMP error fails its transactions is logged, counted (`stats["task_errors"]`) and costs
that event only; the UA keeps answering and its other transactions keep their timers. The bug is
injected into the UA's real transaction layer (a fault, not a stand-in peer)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio.testing

import trio
from sip.calls import TransactionTimeout
from sip.headers import NameAddr
from sip.layer import LayerAction
from sip.message import Request, Response, make_request
from sip.parser import parse_datagram_untrusted
from sip.transaction import TransactionKey
from sip.transport import Address, SipTransport, TransportError
from sip.ua import SipUA
from sip.uri import Params, parse_sip_uri

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def running_ua(t1: float = 0.5) -> AsyncIterator[tuple[SipUA, trio.socket.SocketType]]:
    """A UA on loopback UDP and a peer socket that answers nothing unless told."""
    async with trio.open_nursery() as nursery:
        transport = SipTransport("127.0.0.1", 0, tcp=False)
        await nursery.start(transport.run)
        ua = SipUA(transport, t1=t1)
        await nursery.start(ua.run)
        peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        with peer:
            yield ua, peer
        nursery.cancel_scope.cancel()


def options_to(ua: SipUA, port: int, name: str) -> Request:
    uri = parse_sip_uri(f"sip:x@127.0.0.1:{port}")
    return make_request(
        "OPTIONS", uri, call_id=f"{name}@test", cseq=1,
        from_=NameAddr(parse_sip_uri("sip:100@127.0.0.1"), None, Params((("tag", name),))),
        to=NameAddr(uri), via=ua.new_via(ua.transport.default_transport),
    )  # fmt: skip


async def ua_answers_options(ua: SipUA, peer: trio.socket.SocketType, n: int) -> None:
    """The UA is alive: an OPTIONS from the peer gets its 200."""
    port = peer.getsockname()[1]
    request = (
        f"OPTIONS sip:600@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKalive{n}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:1@127.0.0.1>;tag=a\r\nTo: <sip:600@127.0.0.1>\r\n"
        f"Call-ID: alive{n}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ).encode()
    await peer.sendto(request, ("127.0.0.1", ua.transport.port))
    while True:
        data, _ = await peer.recvfrom(65535)
        message = parse_datagram_untrusted(data)
        if isinstance(message, Response) and message.call_id == f"alive{n}@test":
            assert message.status == 200
            return


def failing(real: Callable[..., list[LayerAction]], times: float) -> Callable[..., list[LayerAction]]:
    """`real`, except that its first `times` calls raise (a bug in the layer)."""
    calls = 0

    def wrapper(*args: object) -> list[LayerAction]:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise RuntimeError("injected bug")
        return real(*args)

    return wrapper


async def test_an_exception_in_the_timer_task_costs_those_timers_only(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_ua() as (ua, peer):
        monkeypatch.setattr(ua._layer, "handle_timeout", failing(ua._layer.handle_timeout, 1))
        with pytest.raises(TransactionTimeout):
            # Timer E retransmits (the first firing raises), Timer F (64*T1) ends it as usual.
            await ua.transact(
                options_to(ua, peer.getsockname()[1], "t"), Address("127.0.0.1", peer.getsockname()[1])
            )
        assert ua.stats["task_errors"] == 1
        await ua_answers_options(ua, peer, 1)


async def test_a_timer_bug_that_never_goes_away_does_not_spin(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every firing raises: the task pauses (10 ms doubling to 1 s) between attempts, so over
    60 s of (virtual) time there are a few dozen attempts, not millions, and the UA answers."""
    async with running_ua() as (ua, peer):
        monkeypatch.setattr(ua._layer, "handle_timeout", failing(ua._layer.handle_timeout, float("inf")))
        port = peer.getsockname()[1]
        with trio.move_on_after(60):
            await ua.transact(options_to(ua, port, "stuck"), Address("127.0.0.1", port))
        assert 5 <= ua.stats["task_errors"] <= 80
        await ua_answers_options(ua, peer, 2)


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_exception_in_the_icmp_task_costs_that_error_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ICMP error for a closed port hits the injected bug: the transaction then ends by its own
    Timer F (T1 = 10 ms here) instead of at once, and the UA is still there; the next ICMP error
    is handled as usual (TransportError at once)."""
    with trio.fail_after(10):
        async with running_ua(t1=0.01) as (ua, peer):
            real = ua._layer.transport_error

            def transport_error(key: TransactionKey, now: float) -> list[LayerAction]:
                if key.method == "OPTIONS" and ua.stats["task_errors"] == 0:
                    raise RuntimeError("injected bug")
                return real(key, now)

            monkeypatch.setattr(ua._layer, "transport_error", transport_error)
            closed = _closed_udp_port()
            with pytest.raises(TransactionTimeout):
                await ua.transact(options_to(ua, closed, "first"), Address("127.0.0.1", closed))
            assert ua.stats["task_errors"] == 1
            with pytest.raises(TransportError):
                await ua.transact(options_to(ua, closed, "second"), Address("127.0.0.1", closed))
            assert ua.stats["task_errors"] == 1
            await ua_answers_options(ua, peer, 3)
