"""The single-port mode over loopback (rtp.browser_port): several calls' browser legs on ONE UDP
port of a worker, each call driven by the browser stand-in of test_rtp_media (ICE checks, DTLS,
SRTP from our own pure objects) with a plain-RTP socket as its SIP side."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
from tests.trio.rtp.test_rtp_media import (
    BRIDGE_CERT,
    BROWSER_CERT,
    PCMU,
    RPWD,
    RUFRAG,
    FakeBrowser,
    LoopbackPorts,
    answer_params,
    browser_offer,
    free_port,
    rtp,
    udp,
)

import trio
from rtp.browser_port import SharedBrowserPort
from rtp.dtls import DtlsEndpoint, DtlsRole, DtlsState
from rtp.errors import NegotiationError
from rtp.ice_lite import IceLiteAgent
from rtp.media import MediaEnded, MediaSession, SipRemote, open_media
from rtp.plane import MediaPlane, open_media_plane


@dataclass
class Call:
    media: MediaSession
    browser: FakeBrowser
    phone: trio.socket.SocketType
    phone_rtcp: trio.socket.SocketType
    sip_rtp_port: int
    ufrag: str
    pwd: str
    scope: trio.CancelScope | None = None


@dataclass
class SharedRig:
    plane: MediaPlane
    port: SharedBrowserPort
    calls: list[Call]


@asynccontextmanager
async def shared_rig(count: int, *, steady: bool = True, twins: bool = True) -> AsyncIterator[SharedRig]:
    """`count` MediaSessions on one SharedBrowserPort, each with its browser and phone sockets."""
    async with open_media_plane(steady=steady) as plane, AsyncExitStack() as stack:
        shared = stack.enter_context(SharedBrowserPort(plane, "127.0.0.1", free_port(), twins=twins))
        calls = []
        for i in range(count):
            srtp_sock, srtcp_sock, browser_sock, phone, phone_rtcp = [await udp() for _ in range(5)]
            for sock in (srtp_sock, srtcp_sock, browser_sock, phone, phone_rtcp):
                stack.enter_context(sock)
            ufrag, pwd = f"call{i}frag", f"bridgepasswordforcall{i:02d}"
            assert shared.reserve(ufrag)  # as open_media does
            media = MediaSession(
                browser_port=shared,
                sip_rtp_sock=srtp_sock,
                sip_rtcp_sock=srtcp_sock,
                ice=IceLiteAgent(ufrag, pwd, RUFRAG, RPWD),
                dtls=DtlsEndpoint(DtlsRole.SERVER, BRIDGE_CERT, ("sha-256", BROWSER_CERT.fingerprint_sha256)),
                plane=plane,
            )
            stack.callback(media.close)
            browser = FakeBrowser(
                browser_sock,
                shared.socket.getsockname(),
                DtlsEndpoint(DtlsRole.CLIENT, BROWSER_CERT, ("sha-256", BRIDGE_CERT.fingerprint_sha256)),
            )
            calls.append(Call(media, browser, phone, phone_rtcp, srtp_sock.getsockname()[1], ufrag, pwd))
        yield SharedRig(plane, shared, calls)


async def dtls_after_ice(browser: FakeBrowser) -> None:
    """The browser's DTLS ClientHello once a check was answered (as browsers do: before that,
    no call of a shared port knows the browser's address)."""
    while not browser.stun_replies:
        await trio.sleep(0.005)
    browser.dtls.start(trio.current_time())
    await browser.flush()


async def run_call(call: Call, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """One call's tasks (browser stand-in, run_ice_dtls, run_relay) until its scope is cancelled."""
    with trio.CancelScope() as scope:
        call.scope = scope
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.browser.run)
            await call.browser.check(ufrag=call.ufrag, pwd=call.pwd)
            nursery.start_soon(dtls_after_ice, call.browser)
            await nursery.start(call.media.run_ice_dtls)
            nursery.start_soon(call.media.run_relay)
            while call.browser.tx is None:
                await trio.sleep(0.01)
            call.media.set_sip_remote(
                SipRemote(call.phone.getsockname(), call.phone_rtcp.getsockname(), PCMU)
            )
            task_status.started()


async def relay_both_ways(call: Call, first_seq: int, count: int, fill: int) -> None:
    """`count` packets browser -> phone and phone -> browser, each checked where it lands."""
    tx = call.browser.tx
    assert tx is not None
    received = len(call.browser.received)
    for seq in range(first_seq, first_seq + count):
        packet = rtp(seq, 160 * seq, 0x1111, bytes([fill]) * 160)
        await call.browser.sock.sendto(tx.protect(packet), call.browser.bridge)
        data, _ = await call.phone.recvfrom(2048)
        assert data == packet  # this call's phone, this call's browser's packet
        await call.phone.sendto(
            rtp(seq, 160 * seq, 0x2222, bytes([fill ^ 0xFF]) * 160), ("127.0.0.1", call.sip_rtp_port)
        )
    while len(call.browser.received) < received + count:
        await trio.sleep(0.01)
    assert all(p[12:] == bytes([fill ^ 0xFF]) * 160 for p in call.browser.received[received:])


@pytest.mark.parametrize("twins", [True, False], ids=["twins", "no-twins"])
@pytest.mark.parametrize("steady", [True, False])
async def test_calls_on_one_port_relay_both_ways(
    steady: bool, twins: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three calls share one browser port: each browser's checks reach its own call (by ufrag),
    each call's media relays both ways to its own phone, and the steady stream moves to the
    calls' connected twins on that same port - or, on a port without twins (a kernel without
    the 4-tuple hash), stays on the port, routed by address to the call's C relay."""
    in_python: dict[int, int] = {}  # datagrams each call's Python path handled
    python_path = MediaSession._browser_process

    def counting(self: MediaSession, n: int, src: tuple[str, int], now: float) -> None:
        in_python[id(self)] = in_python.get(id(self), 0) + 1
        python_path(self, n, src, now)

    monkeypatch.setattr(MediaSession, "_browser_process", counting)
    with trio.fail_after(15):
        async with shared_rig(3, steady=steady, twins=twins) as r, trio.open_nursery() as nursery:
            for call in r.calls:
                await nursery.start(run_call, call)
            for round_ in range(2):
                for i, call in enumerate(r.calls):
                    await relay_both_ways(call, 1 + 10 * round_, 10, fill=i + 1)
            port = r.port.socket.getsockname()
            for call in r.calls:
                stats = call.media.stats()
                assert stats.to_sip.packets == stats.to_browser.packets == 20
                assert stats.dtls_state is DtlsState.CONNECTED
                assert call.browser.stun_replies == [200]
                assert stats.ice.wrong_username == stats.edge.not_validated == 0
                twin = call.media._browser_twin
                if twins:
                    assert stats.edge.twins == 2
                    assert twin is not None
                    assert twin.getsockname() == port  # the twin sits on the shared port
                else:
                    assert stats.edge.twins == 1  # the SIP leg's only
                    assert twin is None
                    assert call.media._browser_twin_peer == call.browser.sock.getsockname()
                    relay = call.media._steady
                    if steady:  # the C relay took the browser's stream from the port: a few punts
                        assert relay is not None
                        assert relay.punts <= 6, relay.punts
                        assert in_python[id(call.media)] < 20, in_python  # of 20 media and the set-up
                    else:
                        assert relay is None
            counters = r.port.counters
            demux = r.port._demux
            if not twins and steady:  # the port's C reader handed the calls' streams to their C relays
                assert demux is not None
                relayed, punted = demux.counts
                assert relayed >= 3 * 18, demux.counts  # of 20 media datagrams per call
                assert punted == counters.datagrams  # the rest went through the Python routing
                assert r.port.counters.routed_in_c == relayed  # (what /metrics adds up)
                assert demux.routes == 3
            elif not twins:  # every browser datagram came through the Python routing
                assert demux is None
                assert counters.datagrams >= 3 * 20
            else:
                assert demux is None
            assert counters.unknown_ufrag == counters.unknown_address == counters.stun_no_ufrag == 0
            assert counters.leg_errors == 0
            nursery.cancel_scope.cancel()
            for call in r.calls:  # the calls end: their routes in the C reader go with them
                call.media.close()
            if demux is not None:
                assert demux.routes == 0


async def test_a_check_before_the_call_serves_its_leg_is_held_for_it() -> None:
    """On a port of its own a call finds the browser's first check queued when run_ice_dtls
    starts; on the shared port it is held for the call's reserved ufrag and answered then."""
    with trio.fail_after(10):
        async with shared_rig(1) as r, trio.open_nursery() as nursery:
            call = r.calls[0]
            nursery.start_soon(call.browser.run)
            await call.browser.check(ufrag=call.ufrag, pwd=call.pwd)
            while r.port.counters.held == 0:
                await trio.sleep(0.005)
            assert call.browser.stun_replies == []
            assert call.media.stats().ice.checks_ok == 0
            nursery.start_soon(dtls_after_ice, call.browser)
            await nursery.start(call.media.run_ice_dtls)
            assert call.browser.stun_replies == [200]
            assert call.media.ice.selected == call.browser.sock.getsockname()
            assert r.port.counters.unknown_ufrag == r.port.counters.unknown_address == 0
            nursery.cancel_scope.cancel()


async def test_strangers_on_the_shared_port_are_dropped_and_counted() -> None:
    """A check for a ufrag no call has, STUN without USERNAME, and SRTP/DTLS from an address that
    passed no check: dropped (no answer) and counted; a check naming a call's ufrag with the
    wrong password reaches that call, whose agent refuses it (401)."""
    with trio.fail_after(15):
        async with shared_rig(2) as r, trio.open_nursery() as nursery:
            for call in r.calls:
                await nursery.start(run_call, call)
            one, two = r.calls
            stranger_sock = await udp()
            with stranger_sock:
                stranger = FakeBrowser(
                    stranger_sock,
                    r.port.socket.getsockname(),
                    DtlsEndpoint(DtlsRole.CLIENT, BROWSER_CERT, ("sha-256", BRIDGE_CERT.fingerprint_sha256)),
                )
                nursery.start_soon(stranger.run)
                await stranger.check(ufrag="nosuchfrag", pwd=one.pwd)
                await stranger_sock.sendto(
                    b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + b"\x00" * 12, stranger.bridge
                )
                assert one.browser.tx is not None
                await stranger_sock.sendto(
                    one.browser.tx.protect(rtp(60, 0, 0x1111, b"\x00" * 160)), stranger.bridge
                )
                await stranger_sock.sendto(bytes([22, 0xFE, 0xFD]) + b"\x00" * 40, stranger.bridge)
                counters = r.port.counters
                while counters.unknown_ufrag + counters.stun_no_ufrag + counters.unknown_address < 4:
                    await trio.sleep(0.01)
                assert (counters.unknown_ufrag, counters.stun_no_ufrag, counters.unknown_address) == (1, 1, 2)
                # A call's ufrag with another call's password: that call's agent says 401.
                await stranger.check(ufrag=one.ufrag, pwd=two.pwd)
                while not stranger.stun_replies:
                    await trio.sleep(0.01)
                assert stranger.stun_replies == [401]
                assert one.media.stats().ice.bad_integrity == 1
                assert two.media.stats().ice.bad_integrity == 0
            for i, call in enumerate(r.calls):  # the calls themselves were not disturbed
                await relay_both_ways(call, 1, 5, fill=i + 1)
                assert call.media.stats().to_sip.dropped_total == 0
            nursery.cancel_scope.cancel()


async def test_an_ended_call_leaves_no_entries_and_the_other_goes_on() -> None:
    with trio.fail_after(15):
        async with shared_rig(2) as r, trio.open_nursery() as nursery:
            one, two = r.calls
            assert len(r.port.routes) == 2  # the ufrags reserved
            for call in r.calls:
                await nursery.start(run_call, call)
            await relay_both_ways(one, 1, 5, fill=1)
            await relay_both_ways(two, 1, 5, fill=2)
            assert len(r.port.routes) == 4  # two ufrags, one validated address each
            assert one.scope is not None
            one.scope.cancel()  # the call's tasks end (run_ice_dtls detaches it) ...
            while len(r.port.routes) != 3:
                await trio.sleep(0.01)
            one.media.close()  # ... and open_media's exit closes it: its ufrag is released
            assert len(r.port.routes) == 2
            # Its browser's checks and media now reach no call: dropped and counted.
            counters = r.port.counters
            await one.browser.check(ufrag=one.ufrag, pwd=one.pwd)
            assert one.browser.tx is not None
            await one.browser.sock.sendto(
                one.browser.tx.protect(rtp(50, 0, 0x1111, b"\x00" * 160)), one.browser.bridge
            )
            while counters.unknown_ufrag + counters.unknown_address < 2:
                await trio.sleep(0.01)
            await relay_both_ways(two, 6, 10, fill=2)
            assert two.media.stats().to_sip.packets == 15
            nursery.cancel_scope.cancel()
        assert len(r.port.routes) == 0  # two's tasks ended and it was closed too


async def test_a_bug_in_one_calls_handler_ends_that_call_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call's handler that raises (a bug) is detached and its run_ice_dtls raises it; the
    shared port keeps serving the other call."""
    with trio.fail_after(15):
        async with shared_rig(2) as r, trio.open_nursery() as nursery:
            one, two = r.calls
            await nursery.start(run_call, two)
            original = MediaSession.serve_shared

            def buggy(self: MediaSession, n: int, src: tuple[str, int], now: float) -> None:
                if self is one.media:
                    raise RuntimeError("handler bug")
                original(self, n, src, now)

            monkeypatch.setattr(MediaSession, "serve_shared", buggy)
            with pytest.RaisesGroup(
                pytest.RaisesExc(RuntimeError, match="handler bug"), flatten_subgroups=True
            ):
                await run_call(one)
            assert r.port.counters.leg_errors == 1
            assert not r.port.closed
            await relay_both_ways(two, 1, 5, fill=2)
            nursery.cancel_scope.cancel()


async def test_a_new_twin_drops_what_others_queued_before_its_connect() -> None:
    """Between a twin's bind and its connect the kernel may queue another address's datagram on
    it (an unconnected member of the port's group for that moment): dropped and counted, the
    peer's own datagrams kept."""
    with trio.fail_after(10):
        async with shared_rig(1) as r:
            media = r.calls[0].media
            peer, other = await udp(), await udp()
            with peer, other, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as twin:
                twin.bind(("127.0.0.1", 0))
                await other.sendto(b"another call's", twin.getsockname())
                await other.sendto(b"another call's too", twin.getsockname())
                await trio.sleep(0.05)
                twin.connect(peer.getsockname())
                twin.setblocking(False)
                await peer.sendto(b"the peer's", twin.getsockname())
                await trio.sleep(0.05)
                media._drop_strays(twin, peer.getsockname())
                assert r.port.counters.twin_strays == 2
                assert twin.recv(100) == b"the peer's"


async def test_open_media_with_a_shared_port(plane: MediaPlane) -> None:
    """No browser port is leased; the answer's candidate is the shared port; ufrags are unique
    among the live calls (a colliding draw is drawn again); nothing is left after the calls,
    nor after an offer refused with 488."""
    ports = LoopbackPorts()
    # open_media draws the ufrag, the password, the session id, SSRC, sequence and timestamp: the
    # second call's first ufrag (draw 6) is the first call's; its redraw (draw 8, after its password) is not.
    drawn = [0]

    def token(n: int) -> bytes:
        drawn[0] += 1
        return bytes([{1: 0x0A, 7: 0x0A, 9: 0x0B}.get(drawn[0], 0x01)]) * n

    def media(shared: SharedBrowserPort, offer: str) -> AbstractAsyncContextManager[MediaSession]:
        return open_media(
            ports, offer, advertise_hosts=["127.0.0.1"], sip_host="127.0.0.1", certificate=BRIDGE_CERT,
            plane=plane, browser_port=shared, token=token,
        )  # fmt: skip

    with SharedBrowserPort(plane, "127.0.0.1", free_port()) as shared:
        async with media(shared, browser_offer()) as a:
            assert ports.open == 2  # the SIP pair only
            port, ufrag_a, _, _, _ = answer_params(a.browser_answer)
            assert port == shared.port
            async with media(shared, browser_offer()) as b:
                port, ufrag_b, _, _, _ = answer_params(b.browser_answer)
                assert port == shared.port
                assert (ufrag_a, ufrag_b) == ("0a0a0a0a", "0b0b0b0b")
                assert drawn[0] == 13
                assert len(shared.routes) == 2  # both reserved
        assert len(shared.routes) == 0
        assert ports.open == 0
        with pytest.raises(NegotiationError):
            async with media(shared, browser_offer(rtcp_mux=False)):
                pass
        assert len(shared.routes) == 0
        assert ports.open == 0
    assert shared.closed


async def test_a_closed_shared_port_ends_new_calls_with_503(plane: MediaPlane) -> None:
    with trio.fail_after(10):
        ports = LoopbackPorts()
        shared = SharedBrowserPort(plane, "127.0.0.1", free_port())
        async with open_media(
            ports, browser_offer(), advertise_hosts=["127.0.0.1"], sip_host="127.0.0.1",
            certificate=BRIDGE_CERT, plane=plane, browser_port=shared,
        ) as media:  # fmt: skip
            shared.close()
            with pytest.raises(MediaEnded, match="media plane closed"):
                await media.run_ice_dtls()


def test_a_busy_port_is_refused() -> None:
    """The port is probed without SO_REUSEPORT: held by any socket, it is an error at start."""

    async def main() -> None:
        async with open_media_plane() as plane:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                holder.bind(("127.0.0.1", 0))
                with pytest.raises(OSError, match="in use"):
                    SharedBrowserPort(plane, "127.0.0.1", holder.getsockname()[1])

    trio.run(main)


@pytest.fixture
async def plane() -> AsyncIterator[MediaPlane]:
    async with open_media_plane() as running:
        yield running


@pytest.mark.parametrize("twins", [True, False], ids=["twins", "no-twins"])
async def test_ipv6_shared_port(plane: MediaPlane, twins: bool) -> None:
    """A shared port on ::1: sources arrive as 4-tuples, the table keys on (host, port), and the
    call's first SRTP opens its IPv6 twin on the shared port (or, without twins, keeps its peer)."""

    async def udp6() -> trio.socket.SocketType:
        sock = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
        await sock.bind(("::1", 0))
        return sock

    with trio.fail_after(10), SharedBrowserPort(plane, "::1", free_port("::1"), twins=twins) as shared:
        s1, s2, browser_sock = await udp(), await udp(), await udp6()
        with s1, s2, browser_sock:
            assert shared.reserve("v6ufrag1")
            media = MediaSession(
                browser_port=shared,
                sip_rtp_sock=s1,
                sip_rtcp_sock=s2,
                ice=IceLiteAgent("v6ufrag1", "bridgepasswordforipv6xx", RUFRAG),
                dtls=DtlsEndpoint(DtlsRole.SERVER, BRIDGE_CERT, ("sha-256", BROWSER_CERT.fingerprint_sha256)),
                plane=plane,
            )
            browser = FakeBrowser(
                browser_sock,
                shared.socket.getsockname()[:2],
                DtlsEndpoint(DtlsRole.CLIENT, BROWSER_CERT, ("sha-256", BRIDGE_CERT.fingerprint_sha256)),
            )
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(browser.run)
                    await browser.check(ufrag="v6ufrag1", pwd="bridgepasswordforipv6xx")
                    nursery.start_soon(dtls_after_ice, browser)
                    await nursery.start(media.run_ice_dtls)
                    here = browser_sock.getsockname()[:2]
                    assert media.ice.selected == here
                    while browser.tx is None:
                        await trio.sleep(0.01)
                    for seq in (1, 2, 3):
                        await browser.send_rtp(seq, 160 * seq, b"\x00" * 160)
                    while media.stats().edge.no_sip_address < 3:
                        await trio.sleep(0.01)
                    assert (media.stats().edge.twins, media.stats().edge.twin_failed) == (int(twins), 0)
                    twin = media._browser_twin
                    if twins:
                        assert twin is not None
                        assert twin.getsockname()[:2] == shared.socket.getsockname()[:2]
                    else:
                        assert twin is None
                        assert media._browser_twin_peer == here
                    assert shared.counters.unknown_address == shared.counters.unknown_ufrag == 0
                    nursery.cancel_scope.cancel()
            finally:
                media.close()
            assert len(shared.routes) == 0
