"""rtp.media over loopback: a browser stand-in built from our own pure objects (an ICE
controlling check sender + a DTLS client + SRTP) and a plain-RTP peer socket as the SIP side."""

from __future__ import annotations

import gc
import os
import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

import trio
from rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, DtlsState
from rtp.errors import NegotiationError
from rtp.ice_lite import CONSENT_TIMEOUT, IceLiteAgent
from rtp.latch import LEARNING_PACKETS
from rtp.media import MediaEnded, MediaSession, SipRemote, open_media
from rtp.plane import MediaPlane, open_media_plane
from rtp.ports import PortAllocator
from rtp.relay import CodecMap, PtRoute, Relay
from rtp.sdp import SessionDescription
from rtp.srtp import SrtpRx, SrtpTx, keys_from_dtls
from rtp.stun import StunClass, binding_request, parse_stun_untrusted

BRIDGE_CERT = DtlsCertificate.generate("bridge")
BROWSER_CERT = DtlsCertificate.generate("browser")
LUFRAG, LPWD = "brdg", "bridgepasswordbridgepw1"
RUFRAG, RPWD = "brws", "browserpasswordbrowser2"
PCMU = CodecMap(to_sip={0: PtRoute(0)}, to_browser={0: PtRoute(0)})


def rtp(seq: int, ts: int, ssrc: int, payload: bytes, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, ts, ssrc) + payload


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody holds: bind(0) WITH SO_REUSEPORT may hand out a port that another
    SO_REUSEPORT socket of this user already has (the kernel lets them share it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def udp(*, reuse_port: bool = True) -> trio.socket.SocketType:
    """A loopback socket; with SO_REUSEPORT, as rtp.ports binds media ports (twins possible)."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    if reuse_port:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
    await sock.bind(("127.0.0.1", free_port() if reuse_port else 0))
    return sock


@dataclass
class FakeBrowser:
    """A controlling ICE agent (checks only) + DTLS client + SRTP, on one loopback socket."""

    sock: trio.socket.SocketType
    bridge: tuple[str, int]
    dtls: DtlsEndpoint
    tx: SrtpTx | None = None
    rx: SrtpRx | None = None
    received: list[bytes] = field(default_factory=list)
    received_rtcp: list[bytes] = field(default_factory=list)
    stun_replies: list[int] = field(default_factory=list)
    we_are_client: bool = True

    async def check(self, use_candidate: bool = True, pwd: str = LPWD, ufrag: str = LUFRAG) -> None:
        req = binding_request(
            os.urandom(12),
            username=f"{ufrag}:{RUFRAG}",
            key=pwd.encode(),
            priority=1,
            ice_controlling=42,
            use_candidate=use_candidate,
        )
        await self.sock.sendto(req, self.bridge)

    async def send_rtp(self, seq: int, ts: int, payload: bytes) -> None:
        assert self.tx is not None
        await self.sock.sendto(self.tx.protect(rtp(seq, ts, 1111, payload)), self.bridge)

    async def flush(self) -> None:
        for d in self.dtls.outgoing():
            await self.sock.sendto(d, self.bridge)

    async def run(self) -> None:
        """Receive forever: STUN replies, DTLS records (until connected), SRTP."""
        while True:
            with trio.move_on_at(self.dtls.next_deadline() or trio.current_time() + 0.2):
                data, _ = await self.sock.recvfrom(2048)
                if data[0] < 4:
                    msg = parse_stun_untrusted(data)
                    assert msg.cls in (StunClass.SUCCESS, StunClass.ERROR)
                    self.stun_replies.append(msg.error_code or 200)
                elif 20 <= data[0] < 64:
                    self.dtls.feed_untrusted(data, trio.current_time())
                elif self.rx is not None and 192 <= data[1] <= 223:
                    self.received_rtcp.append(self.rx.unprotect_rtcp(data))
                elif self.rx is not None:
                    self.received.append(self.rx.unprotect(data))
            self.dtls.handle_timeout(trio.current_time())
            await self.flush()
            if self.dtls.state is DtlsState.CONNECTED and self.tx is None:
                profile = self.dtls.srtp_profile
                tx, rx = keys_from_dtls(profile, self.dtls.keying_material(), self.we_are_client)
                self.tx, self.rx = SrtpTx(profile, tx), SrtpRx(profile, rx)


@dataclass
class Rig:
    media: MediaSession
    browser: FakeBrowser
    phone: trio.socket.SocketType
    phone_rtcp: trio.socket.SocketType
    sip_rtp_port: int
    sip_rtcp_port: int
    plane: MediaPlane


@asynccontextmanager
async def rig(
    *,
    browser_expects: str | None = None,
    bridge_expects: str | None = None,
    consent_timeout: float = CONSENT_TIMEOUT,
    twins: bool = True,
    steady: bool = True,
    **kwargs: object,
) -> AsyncIterator[Rig]:
    bsock, srtp_sock, srtcp_sock = [await udp(reuse_port=twins) for _ in range(3)]
    browser_sock, phone, phone_rtcp = await udp(), await udp(), await udp()
    async with open_media_plane(steady=steady) as plane:
        with bsock, srtp_sock, srtcp_sock, browser_sock, phone, phone_rtcp:
            media = MediaSession(
                browser_sock=bsock,
                sip_rtp_sock=srtp_sock,
                sip_rtcp_sock=srtcp_sock,
                ice=IceLiteAgent(LUFRAG, LPWD, RUFRAG, RPWD, consent_timeout),
                dtls=DtlsEndpoint(
                    DtlsRole.SERVER,
                    BRIDGE_CERT,
                    ("sha-256", bridge_expects or BROWSER_CERT.fingerprint_sha256),
                ),
                plane=plane,
                **kwargs,  # type: ignore[arg-type]
            )
            browser = FakeBrowser(
                browser_sock,
                bsock.getsockname(),
                DtlsEndpoint(
                    DtlsRole.CLIENT,
                    BROWSER_CERT,
                    ("sha-256", browser_expects or BRIDGE_CERT.fingerprint_sha256),
                ),
            )
            try:
                yield Rig(
                    media,
                    browser,
                    phone,
                    phone_rtcp,
                    srtp_sock.getsockname()[1],
                    srtcp_sock.getsockname()[1],
                    plane,
                )
            finally:
                media.close()


@pytest.fixture
async def plane() -> AsyncIterator[MediaPlane]:
    async with open_media_plane() as running:
        yield running


async def connect(r: Rig, nursery: trio.Nursery) -> None:
    nursery.start_soon(r.browser.run)
    await r.browser.check()
    r.browser.dtls.start(trio.current_time())
    await r.browser.flush()
    await nursery.start(r.media.run_ice_dtls)
    nursery.start_soon(r.media.run_relay)
    while r.browser.tx is None:
        await trio.sleep(0.01)


async def test_ice_dtls_and_srtp_both_ways() -> None:
    with trio.fail_after(10):
        async with rig() as r, trio.open_nursery() as nursery:
            await connect(r, nursery)
            assert r.media.keys_ready
            assert r.media.ice.selected == r.browser.sock.getsockname()
            assert r.browser.stun_replies == [200]
            # while the phone rings (no SIP answer yet) browser media is counted, not relayed
            await r.browser.send_rtp(99, 0, b"\x00" * 160)
            while r.media.stats().edge.no_sip_address == 0:
                await trio.sleep(0.01)
            assert r.media.stats().to_sip.dropped_total == 0
            phone_addr = r.phone.getsockname()
            r.media.set_sip_remote(SipRemote(phone_addr, r.phone_rtcp.getsockname(), PCMU))
            # browser -> SIP: SRTP in, plain RTP out at the phone
            assert r.browser.tx is not None
            for i in range(5):
                await r.browser.sock.sendto(
                    r.browser.tx.protect(rtp(100 + i, 160 * i, 0x1111, bytes([i]) * 160)), r.browser.bridge
                )
            for i in range(5):
                data, src = await r.phone.recvfrom(2048)
                assert data == rtp(100 + i, 160 * i, 0x1111, bytes([i]) * 160)
                assert src[1] == r.sip_rtp_port
            # SIP -> browser: plain RTP in, SRTP out (SSRC rewritten to the bridge's own)
            for i in range(5):
                await r.phone.sendto(
                    rtp(7 + i, 1000 + 160 * i, 0x2222, bytes([0x55]) * 160), ("127.0.0.1", r.sip_rtp_port)
                )
            while len(r.browser.received) < 5:
                await trio.sleep(0.01)
            ssrcs = {struct.unpack_from("!I", p, 8)[0] for p in r.browser.received}
            assert ssrcs == {r.media.relay.ssrc}
            assert all(p[12:] == bytes([0x55]) * 160 for p in r.browser.received)
            seqs = [struct.unpack_from("!H", p, 2)[0] for p in r.browser.received]
            assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(5)]
            stats = r.media.stats()
            assert stats.to_sip.packets == 5
            assert stats.to_browser.packets == 5
            assert stats.dtls_state is DtlsState.CONNECTED
            # RTCP both ways: SRTCP in -> RTCP at the phone's RTCP port, and back
            rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1111)  # an empty receiver report
            await r.browser.sock.sendto(r.browser.tx.protect_rtcp(rr), r.browser.bridge)
            data, src = await r.phone_rtcp.recvfrom(2048)
            assert data == rr
            assert src[1] == r.sip_rtcp_port
            sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x2222, 1, 2, 1000, 5, 800)
            await r.phone_rtcp.sendto(sr, ("127.0.0.1", r.sip_rtcp_port))
            while not r.browser.received_rtcp:
                await trio.sleep(0.01)
            got = r.browser.received_rtcp[0]
            assert got[1] == 200
            assert struct.unpack_from("!I", got, 4)[0] == r.media.relay.ssrc  # mapped to our SSRC
            assert r.media.stats().to_sip.rtcp_packets == 1
            assert r.media.stats().to_browser.rtcp_packets == 1
            nursery.cancel_scope.cancel()


async def relay_both_ways(r: Rig, first_seq: int, count: int) -> None:
    """`count` packets browser -> phone and phone -> browser, each checked where it lands."""
    assert r.browser.tx is not None
    bridge_rtp = ("127.0.0.1", r.sip_rtp_port)
    received = len(r.browser.received)
    for i in range(count):
        seq = first_seq + i
        await r.browser.sock.sendto(
            r.browser.tx.protect(rtp(seq, 160 * seq, 0x1111, b"\x01" * 160)), r.browser.bridge
        )
        data, src = await r.phone.recvfrom(2048)
        assert data == rtp(seq, 160 * seq, 0x1111, b"\x01" * 160)
        assert src[1] == r.sip_rtp_port
        await r.phone.sendto(rtp(seq, 160 * seq, 0x2222, b"\x55" * 160), bridge_rtp)
    while len(r.browser.received) < received + count:
        await trio.sleep(0.01)


@pytest.mark.parametrize(("twins", "steady"), [(True, True), (True, False), (False, True)])
async def test_connected_twins_carry_the_steady_stream(twins: bool, steady: bool) -> None:
    """With SO_REUSEPORT ports (rtp.ports) the first media datagram from the browser's nominated
    address and from the latched SIP source each opens a connected twin on the same port, which
    then carries that stream both ways (in C once both are up, rtp._steady, or in Python); other
    sources still reach the unconnected socket and its checks, and a port without SO_REUSEPORT
    simply has no twins."""
    with trio.fail_after(10):
        async with rig(twins=twins, steady=steady) as r, trio.open_nursery() as nursery:
            await connect(r, nursery)
            phone_addr = r.phone.getsockname()
            r.media.set_sip_remote(SipRemote(phone_addr, r.phone_rtcp.getsockname(), PCMU))
            await relay_both_ways(r, 1, 3)
            edge = r.media.stats().edge
            assert (edge.twins, edge.twin_failed) == ((2, 0) if twins else (0, 2))
            assert (r.media._browser_twin is not None) is twins
            assert (r.media._sip_twin is not None) is twins
            await relay_both_ways(r, 4, 20)  # through the twins
            c_relay = r.media._steady
            assert (c_relay is not None) is (twins and steady)
            if c_relay is not None:
                assert c_relay.armed
                assert c_relay.punts <= 2  # the first datagram of each stream (no source yet)
            stranger = await udp()
            with stranger:
                await stranger.sendto(rtp(9, 0, 0x6666, b"\x66" * 160), ("127.0.0.1", r.sip_rtp_port))
                await stranger.sendto(rtp(9, 0, 0x6666, b"\x66" * 160), r.browser.bridge)
                while r.media.stats().edge.unknown_source + r.media.stats().edge.not_validated < 2:
                    await trio.sleep(0.01)
            await r.browser.check()  # a consent check on the nominated pair: answered
            while len(r.browser.stun_replies) < 2:
                await trio.sleep(0.01)
            assert r.browser.stun_replies == [200, 200]
            await relay_both_ways(r, 24, 3)
            stats = r.media.stats()
            assert stats.to_sip.packets == stats.to_browser.packets == 26
            assert stats.demux.rtp == 27  # and the stranger's
            assert stats.to_sip.reception.expected == stats.to_browser.reception.expected == 26
            assert stats.to_sip.reception.lost == stats.to_browser.reception.lost == 0
            assert stats.edge.send_failed == 0
            if c_relay is not None:
                assert c_relay.punts <= 3  # ...and the consent check
            nursery.cancel_scope.cancel()
        assert r.media._browser_twin is None
        assert r.media._sip_twin is None


async def test_bad_packets_are_dropped_and_counted() -> None:
    with trio.fail_after(10):
        async with rig() as r, trio.open_nursery() as nursery:
            stranger = await udp()
            with stranger:
                # before any check: DTLS and RTP from unvalidated addresses are dropped
                await stranger.sendto(b"\x16\xfe\xfd" + bytes(10), r.browser.bridge)
                await stranger.sendto(rtp(1, 1, 1, b"x"), r.browser.bridge)
                await stranger.sendto(b"\x05garbage", r.browser.bridge)
                await stranger.sendto(b"\x00\x01\x00\x00junkjunkjunkjunk", r.browser.bridge)
                await connect(r, nursery)
                await r.browser.check(pwd="x" * 22)  # wrong password -> 401
                r.media.set_sip_remote(SipRemote(r.phone.getsockname(), r.phone_rtcp.getsockname(), PCMU))
                assert r.browser.tx is not None
                good = r.browser.tx.protect(rtp(5, 800, 0x1111, b"\x01" * 160))
                tampered = bytearray(r.browser.tx.protect(rtp(6, 960, 0x1111, b"\x01" * 160)))
                tampered[20] ^= 1
                await r.browser.sock.sendto(good, r.browser.bridge)
                await r.browser.sock.sendto(good, r.browser.bridge)  # replay
                await r.browser.sock.sendto(bytes(tampered), r.browser.bridge)  # auth failure
                await r.browser.sock.sendto(b"\x80", r.browser.bridge)  # one byte: not even RTP
                await r.browser.sock.sendto(b"\x80\x00\x00", r.browser.bridge)  # truncated RTP
                # SIP side: a stranger after the phone latched, and garbage from the phone
                await r.phone.sendto(rtp(1, 1, 0x2222, b"\x00" * 160), ("127.0.0.1", r.sip_rtp_port))
                await r.phone.sendto(b"\x00\x01", ("127.0.0.1", r.sip_rtp_port))
                await stranger.sendto(rtp(2, 161, 0x3333, b"\x00" * 160), ("127.0.0.1", r.sip_rtp_port))
                data, _ = await r.phone.recvfrom(2048)
                assert data == rtp(5, 800, 0x1111, b"\x01" * 160)
                with trio.move_on_after(0.3):
                    await r.phone.recvfrom(2048)
                    pytest.fail("a bad packet went through")
                stats = r.media.stats()
                assert stats.edge.not_validated == 2
                assert stats.demux.unknown == 2
                assert stats.ice.malformed == 1
                assert stats.ice.bad_integrity == 1
                assert stats.to_sip.packets == 1
                assert stats.to_sip.dropped_total == 3
                assert stats.edge.unknown_source == 1
                assert stats.to_browser.dropped_total == 1
                assert 401 in r.browser.stun_replies
                nursery.cancel_scope.cancel()


async def test_symmetric_rtp_latches_on_the_real_source() -> None:
    with trio.fail_after(10):
        async with rig() as r, trio.open_nursery() as nursery:
            await connect(r, nursery)
            # the SDP says port 9, the phone really sends from its own socket
            r.media.set_sip_remote(SipRemote(("127.0.0.1", 9), ("127.0.0.1", 10), PCMU))
            await r.phone.sendto(rtp(1, 0, 0x2222, b"\x00" * 160), ("127.0.0.1", r.sip_rtp_port))
            while not r.browser.received:
                await trio.sleep(0.01)
            assert r.browser.tx is not None
            await r.browser.sock.sendto(r.browser.tx.protect(rtp(1, 0, 1, b"\x02" * 160)), r.browser.bridge)
            data, _ = await r.phone.recvfrom(2048)
            assert data[12:] == b"\x02" * 160
            assert r.media.stats().edge.latched == 1
            nursery.cancel_scope.cancel()


async def udp_on(host: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def test_a_sprayer_from_another_address_does_not_capture_the_sip_leg() -> None:
    """RTP bleed: valid-looking RTP from another IP reaches the SIP port right after the answer,
    before the phone's first packet. Nothing from it is relayed, the phone's stream is, and media
    to SIP keeps going to the phone."""
    with trio.fail_after(10):
        async with rig() as r, trio.open_nursery() as nursery:
            await connect(r, nursery)
            sprayer = await udp_on("127.0.0.30")
            with sprayer:
                # The SDP names the phone's IP and another port (a NAT rewriting ports).
                r.media.set_sip_remote(SipRemote(("127.0.0.1", 9), ("127.0.0.1", 10), PCMU))
                rng = random.Random(7)
                bridge_rtp = ("127.0.0.1", r.sip_rtp_port)
                for _ in range(50):  # random sequence numbers, negotiated and other PTs, garbage
                    seq, pt = rng.randrange(1 << 16), rng.choice([0, 0, 8, 101])
                    await sprayer.sendto(rtp(seq, 0, 0x6666, b"\x66" * 160, pt), bridge_rtp)
                    await sprayer.sendto(rng.randbytes(rng.randrange(1, 200)), bridge_rtp)
                await sprayer.sendto(
                    struct.pack("!BBHI", 0x80, 201, 1, 0x6666), ("127.0.0.1", r.sip_rtcp_port)
                )
                await trio.sleep(0.1)
                assert r.media.stats().edge.unknown_source >= 100
                for i in range(5):
                    await r.phone.sendto(rtp(40 + i, 160 * i, 0x2222, b"\x55" * 160), bridge_rtp)
                while len(r.browser.received) < 5:
                    await trio.sleep(0.01)
                assert r.browser.tx is not None
                await r.browser.sock.sendto(
                    r.browser.tx.protect(rtp(1, 0, 1, b"\x02" * 160)), r.browser.bridge
                )
                data, _ = await r.phone.recvfrom(2048)
                assert data[12:] == b"\x02" * 160
                with trio.move_on_after(0.2):
                    await sprayer.recvfrom(2048)
                    pytest.fail("media went to the sprayer")
            assert all(p[12:] == b"\x55" * 160 for p in r.browser.received)
            stats = r.media.stats()
            assert stats.edge.latched == 1
            assert stats.edge.latch_invalid >= 50
            assert stats.edge.unknown_source == stats.edge.latch_invalid + stats.edge.latch_learning + 1
            nursery.cancel_scope.cancel()


async def test_a_source_on_another_ip_latches_after_a_learning_run() -> None:
    """A PBX whose media server is not the SDP's IP: its first LEARNING_PACKETS - 1 packets are
    held back, then the leg latches and media to SIP goes there; RTCP from that host latches too."""
    with trio.fail_after(10):
        async with rig() as r, trio.open_nursery() as nursery:
            await connect(r, nursery)
            media_server, media_rtcp = await udp_on("127.0.0.40"), await udp_on("127.0.0.40")
            with media_server, media_rtcp:
                r.media.set_sip_remote(SipRemote(r.phone.getsockname(), r.phone_rtcp.getsockname(), PCMU))
                for i in range(LEARNING_PACKETS + 2):
                    await media_server.sendto(
                        rtp(300 + i, 160 * i, 0x7777, bytes([i]) * 160), ("127.0.0.1", r.sip_rtp_port)
                    )
                while len(r.browser.received) < 3:
                    await trio.sleep(0.01)
                assert [p[12] for p in r.browser.received] == [
                    LEARNING_PACKETS - 1,
                    LEARNING_PACKETS,
                    LEARNING_PACKETS + 1,
                ]
                assert r.browser.tx is not None
                await r.browser.sock.sendto(
                    r.browser.tx.protect(rtp(1, 0, 1, b"\x03" * 160)), r.browser.bridge
                )
                data, _ = await media_server.recvfrom(2048)
                assert data[12:] == b"\x03" * 160
                sr = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0x7777, 1, 2, 1000, 5, 800)
                await media_rtcp.sendto(sr, ("127.0.0.1", r.sip_rtcp_port))
                rr = struct.pack("!BBHI", 0x80, 201, 1, 0x1111)
                while not r.browser.received_rtcp:
                    await trio.sleep(0.01)
                await r.browser.sock.sendto(r.browser.tx.protect_rtcp(rr), r.browser.bridge)
                data, _ = await media_rtcp.recvfrom(2048)
                assert data == rr
            stats = r.media.stats()
            assert stats.edge.latch_learning == LEARNING_PACKETS - 1
            assert stats.edge.latched == 2  # RTP, then RTCP
            nursery.cancel_scope.cancel()


async def test_fingerprint_mismatch_ends_media() -> None:
    with trio.fail_after(10):
        async with rig(bridge_expects=DtlsCertificate.generate().fingerprint_sha256) as r:
            with pytest.RaisesGroup(pytest.RaisesExc(MediaEnded, match="fingerprint mismatch")):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(r.browser.run)
                    await r.browser.check()
                    r.browser.dtls.start(trio.current_time())
                    await r.browser.flush()
                    await r.media.run_ice_dtls()


async def test_handshake_timeout_without_browser(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with rig(handshake_timeout=5.0) as r:
            start = trio.current_time()
            with pytest.raises(MediaEnded, match="ICE did not complete") as info:
                await r.media.run_ice_dtls()
            assert info.value.code == 408
            assert trio.current_time() - start == pytest.approx(5.0)


@pytest.mark.parametrize("consent_timeout", [None, 4.0], ids=["rfc7675-default", "given"])
async def test_consent_expires_without_checks(
    autojump_clock: trio.testing.MockClock, consent_timeout: float | None
) -> None:
    """RFC 7675 5.1: 30 s after the last check by default; the agent's `consent_timeout` else."""
    with trio.fail_after(100):
        async with (
            rig(media_timeout=None)
            if consent_timeout is None
            else rig(media_timeout=None, consent_timeout=consent_timeout)
        ) as r:
            with pytest.RaisesGroup(pytest.RaisesExc(MediaEnded, match="consent")):
                async with trio.open_nursery() as nursery:
                    await connect(r, nursery)
                    connected = trio.current_time()
            expected = 30.0 if consent_timeout is None else consent_timeout
            assert trio.current_time() - connected == pytest.approx(expected, abs=0.5)


async def test_no_media_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with rig(media_timeout=3.0) as r:

            async def keep_consent() -> None:
                while True:
                    await trio.sleep(1)
                    await r.browser.check(use_candidate=False)

            with pytest.RaisesGroup(pytest.RaisesExc(MediaEnded, match="no media")):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(r.browser.run)
                    await r.browser.check()
                    r.browser.dtls.start(trio.current_time())
                    await r.browser.flush()
                    nursery.start_soon(keep_consent)
                    await r.media.run_ice_dtls()


def test_sockets_are_released() -> None:
    """close() releases the duplicated descriptors (no fd leak per call)."""
    gc.collect()  # earlier tests' garbage (sockets in cycles) must not close during the count
    before = len(os.listdir("/proc/self/fd"))

    async def main() -> None:
        async with rig():
            pass

    for _ in range(5):
        trio.run(main)
    assert len(os.listdir("/proc/self/fd")) == before


# --- open_media: SDP for both legs, ports, hold, DTLS client role -----------------------------


class LoopbackPorts:
    """The allocator interface open_media needs, recording leases so tests can check release."""

    def __init__(self) -> None:
        self.open = 0
        self.leased = 0

    @asynccontextmanager
    async def udp(self) -> AsyncIterator[trio.socket.SocketType]:
        self.open += 1
        self.leased += 1
        try:
            with await udp() as sock:
                yield sock
        finally:
            self.open -= 1

    @asynccontextmanager
    async def udp_pair(self) -> AsyncIterator[tuple[trio.socket.SocketType, trio.socket.SocketType]]:
        async with self.udp() as a, self.udp() as b:
            yield a, b


def browser_offer(setup: str = "actpass", rtcp_mux: bool = True) -> str:
    """A Chromium-shaped audio offer (G.711 + telephone-event/8000 as PT 126, BUNDLE, rtcp-mux)."""
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126",
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{RUFRAG}",
        f"a=ice-pwd:{RPWD}",
        "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {BROWSER_CERT.fingerprint_sha256}",
        f"a=setup:{setup}",
        "a=mid:0",
        "a=sendrecv",
        *(["a=rtcp-mux"] if rtcp_mux else []),
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:126 telephone-event/8000",
        "a=ssrc:1111 cname:browser",
    ]
    return "\r\n".join(lines) + "\r\n"


def phone_sdp(port: int, codec: str = "PCMU", direction: str = "sendrecv", version: int = 1) -> str:
    pt = {"PCMU": 0, "PCMA": 8}[codec]
    return (
        f"v=0\r\no=phone 7 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {codec}/8000\r\n"
        f"a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
    )


def answer_params(answer: str) -> tuple[int, str, str, str, str]:
    sdp = SessionDescription.parse_untrusted(answer)
    audio = sdp.media[0]
    fp = sdp.fingerprint_for(audio)
    assert fp is not None
    return (
        audio.port,
        sdp.session_or_media(audio, "ice-ufrag") or "",
        sdp.session_or_media(audio, "ice-pwd") or "",
        fp.value,
        sdp.session_or_media(audio, "setup") or "",
    )


async def test_open_media_call_with_early_media_and_hold(plane: MediaPlane) -> None:
    ports = LoopbackPorts()
    with trio.fail_after(10):
        phone = await udp()
        with phone:
            async with open_media(
                ports,
                browser_offer(),
                advertise_hosts=["127.0.0.1"],
                sip_host="127.0.0.1",
                certificate=BRIDGE_CERT,
                plane=plane,
            ) as media:
                assert ports.open == 3
                port, ufrag, pwd, fingerprint, setup = answer_params(media.browser_answer)
                assert setup == "passive"
                assert fingerprint == BRIDGE_CERT.fingerprint_sha256
                assert "a=ice-lite" in media.browser_answer
                assert "a=candidate:" in media.browser_answer
                sip = SessionDescription.parse_untrusted(media.sip_offer)
                sip_port = sip.media[0].port
                browser_sock = await udp()
                with browser_sock:
                    browser = FakeBrowser(
                        browser_sock,
                        ("127.0.0.1", port),
                        DtlsEndpoint(DtlsRole.CLIENT, BROWSER_CERT, ("sha-256", fingerprint)),
                    )
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(browser.run)
                        await browser.check(ufrag=ufrag, pwd=pwd)
                        browser.dtls.start(trio.current_time())
                        await browser.flush()
                        await nursery.start(media.run_ice_dtls)
                        nursery.start_soon(media.run_relay)
                        while browser.tx is None:
                            await trio.sleep(0.01)
                        # early media: the 183's SDP
                        media.set_sip_answer(phone_sdp(phone.getsockname()[1]))
                        await phone.sendto(rtp(1, 0, 0x2222, b"\x11" * 160), ("127.0.0.1", sip_port))
                        while not browser.received:
                            await trio.sleep(0.01)
                        assert browser.received[0][12:] == b"\x11" * 160
                        await browser_sock.sendto(
                            browser.tx.protect(rtp(1, 0, 1111, b"\x22" * 160)), browser.bridge
                        )
                        data, _ = await phone.recvfrom(2048)
                        assert data[12:] == b"\x22" * 160
                        # the phone holds (sendonly): we answer recvonly and stop sending to it
                        answer = media.answer_sip_offer(
                            phone_sdp(phone.getsockname()[1], direction="sendonly", version=2)
                        )
                        assert "a=recvonly" in answer
                        await browser_sock.sendto(
                            browser.tx.protect(rtp(2, 160, 1111, b"\x33" * 160)), browser.bridge
                        )
                        with trio.move_on_after(0.3):
                            await phone.recvfrom(2048)
                            pytest.fail("media sent to a phone that holds")
                        assert media.stats().edge.on_hold == 1
                        # resume
                        answer = media.answer_sip_offer(phone_sdp(phone.getsockname()[1], version=3))
                        assert "a=sendrecv" in answer
                        await browser_sock.sendto(
                            browser.tx.protect(rtp(3, 320, 1111, b"\x44" * 160)), browser.bridge
                        )
                        data, _ = await phone.recvfrom(2048)
                        assert data[12:] == b"\x44" * 160
                        nursery.cancel_scope.cancel()
        assert ports.open == 0


async def test_open_media_passes_the_consent_timeout(plane: MediaPlane) -> None:
    ports = LoopbackPorts()
    hosts = ["127.0.0.1"]
    async with open_media(
        ports,
        browser_offer(),
        advertise_hosts=hosts,
        sip_host="127.0.0.1",
        certificate=BRIDGE_CERT,
        plane=plane,
    ) as media:
        assert media.ice.consent_timeout == 30.0  # RFC 7675 section 5.1
    async with open_media(
        ports, browser_offer(), advertise_hosts=hosts, sip_host="127.0.0.1", certificate=BRIDGE_CERT,
        plane=plane, consent_timeout=2.5,
    ) as media:  # fmt: skip
        assert media.ice.consent_timeout == 2.5
    assert ports.open == 0


async def test_open_media_confirms_the_sip_codec(plane: MediaPlane) -> None:
    ports = LoopbackPorts()
    offer = browser_offer()
    async with open_media(
        ports,
        offer,
        advertise_hosts=["127.0.0.1"],
        sip_host="127.0.0.1",
        certificate=BRIDGE_CERT,
        plane=plane,
    ) as media:
        first = SessionDescription.parse_untrusted(media.browser_answer)
        assert first.media[0].payload_types[:2] == (0, 8)
        media.set_sip_answer(phone_sdp(4000, codec="PCMA"))
        final = SessionDescription.parse_untrusted(media.confirm_browser_answer(offer))
        assert final.media[0].payload_types == (8, 126)
        assert answer_params(str(final))[1:4] == answer_params(str(first))[1:4]
        assert int(final.origin.session_version) == int(first.origin.session_version) + 1
        assert media.relay.codec_map.to_sip[8].out_pt == 8


async def test_open_media_refuses_a_bad_offer_and_releases_ports(plane: MediaPlane) -> None:
    ports = LoopbackPorts()
    with pytest.raises(NegotiationError, match="rtcp-mux"):
        async with open_media(
            ports,
            browser_offer(rtcp_mux=False),
            advertise_hosts=["127.0.0.1"],
            sip_host="127.0.0.1",
            certificate=BRIDGE_CERT,
            plane=plane,
        ):
            pytest.fail("unreachable")
    assert ports.leased == 3
    assert ports.open == 0
    async with open_media(
        ports,
        browser_offer(),
        advertise_hosts=["127.0.0.1"],
        sip_host="127.0.0.1",
        certificate=BRIDGE_CERT,
        plane=plane,
    ) as media:
        with pytest.raises(NegotiationError):
            media.set_sip_answer(phone_sdp(4000).replace("RTP/AVP 0 101", "RTP/AVP 18"))


async def test_open_media_as_dtls_client(plane: MediaPlane) -> None:
    """An offer with a=setup:passive makes us the DTLS client: our ClientHello goes out once a
    connectivity check has validated the browser's address."""
    ports = LoopbackPorts()
    with trio.fail_after(10):
        async with open_media(
            ports,
            browser_offer(setup="passive"),
            advertise_hosts=["127.0.0.1"],
            sip_host="127.0.0.1",
            certificate=BRIDGE_CERT,
            plane=plane,
        ) as media:
            port, ufrag, pwd, fingerprint, setup = answer_params(media.browser_answer)
            assert setup == "active"
            browser_sock = await udp()
            with browser_sock:
                browser = FakeBrowser(
                    browser_sock,
                    ("127.0.0.1", port),
                    DtlsEndpoint(DtlsRole.SERVER, BROWSER_CERT, ("sha-256", fingerprint)),
                    we_are_client=False,
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(browser.run)
                    await browser.check(ufrag=ufrag, pwd=pwd)
                    await nursery.start(media.run_ice_dtls)
                    while browser.tx is None:
                        await trio.sleep(0.01)
                    assert media.dtls.is_client
                    nursery.cancel_scope.cancel()


async def test_ipv6_loopback(plane: MediaPlane) -> None:
    """The browser leg on ::1: sources arrive as 4-tuples and are keyed on (host, port)."""

    async def udp6() -> trio.socket.SocketType:
        sock = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind(("::1", free_port("::1")))
        return sock

    with trio.fail_after(10):
        bsock, s1, s2, browser_sock = await udp6(), await udp(), await udp(), await udp6()
        with bsock, s1, s2, browser_sock:
            media = MediaSession(
                browser_sock=bsock,
                sip_rtp_sock=s1,
                sip_rtcp_sock=s2,
                ice=IceLiteAgent(LUFRAG, LPWD, RUFRAG),
                dtls=DtlsEndpoint(DtlsRole.SERVER, BRIDGE_CERT, ("sha-256", BROWSER_CERT.fingerprint_sha256)),
                plane=plane,
            )
            browser = FakeBrowser(
                browser_sock,
                bsock.getsockname()[:2],
                DtlsEndpoint(DtlsRole.CLIENT, BROWSER_CERT, ("sha-256", BRIDGE_CERT.fingerprint_sha256)),
            )
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(browser.run)
                    await browser.check()
                    browser.dtls.start(trio.current_time())
                    await browser.flush()
                    await nursery.start(media.run_ice_dtls)
                    assert media.ice.selected == browser_sock.getsockname()[:2]
                    while browser.tx is None:
                        await trio.sleep(0.01)
                    # SRTP before the SIP answer: counted, and the first opens the IPv6 twin.
                    for seq in (1, 2, 3):
                        await browser.send_rtp(seq, 160 * seq, b"\x00" * 160)
                    while media.stats().edge.no_sip_address < 3:
                        await trio.sleep(0.01)
                    assert (media.stats().edge.twins, media.stats().edge.twin_failed) == (1, 0)
                    nursery.cancel_scope.cancel()
            finally:
                media.close()


@pytest.mark.parametrize("phase", ["before-check", "mid-handshake", "connected"])
async def test_cancel_at_every_phase_releases_everything(phase: str, plane: MediaPlane) -> None:
    ports = PortAllocator(42000, 42099, "127.0.0.1")
    gc.collect()  # earlier tests' garbage must not close during the count
    fds = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(10):
        async with open_media(
            ports,
            browser_offer(),
            advertise_hosts=["127.0.0.1"],
            sip_host="127.0.0.1",
            certificate=BRIDGE_CERT,
            plane=plane,
        ) as media:
            assert len(ports.in_use) == 3
            port, ufrag, pwd, fingerprint, _ = answer_params(media.browser_answer)
            browser_sock = await udp()
            with browser_sock:
                browser = FakeBrowser(
                    browser_sock,
                    ("127.0.0.1", port),
                    DtlsEndpoint(DtlsRole.CLIENT, BROWSER_CERT, ("sha-256", fingerprint)),
                )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(media.run_ice_dtls)
                    nursery.start_soon(media.run_relay)
                    if phase != "before-check":
                        await browser.check(ufrag=ufrag, pwd=pwd)
                        browser.dtls.start(trio.current_time())
                        await browser.flush()  # ClientHello sent, nobody reads the reply
                    if phase == "connected":
                        nursery.start_soon(browser.run)
                        while not media.keys_ready:
                            await trio.sleep(0.01)
                    await trio.sleep(0.05)
                    nursery.cancel_scope.cancel()
            out_before_close = media.dtls.counters.datagrams_out
    assert not ports.in_use
    assert len(os.listdir("/proc/self/fd")) == fds
    if phase == "connected":
        assert media.dtls.state is DtlsState.CLOSED
        assert media.dtls.counters.datagrams_out == out_before_close + 1  # close_notify on the way out


async def test_server_flight_is_retransmitted_by_the_edge(autojump_clock: trio.testing.MockClock) -> None:
    """The browser ignores our first flights: the edge re-sends them on the DTLS timer (1 s, then
    2 s: RFC 6347 4.2.4.1), driven by Trio's clock."""
    with trio.fail_after(100):
        async with rig() as r, trio.open_nursery() as nursery:
            nursery.start_soon(r.media.run_ice_dtls)
            await r.browser.check()
            r.browser.dtls.start(trio.current_time())
            await r.browser.flush()
            start = trio.current_time()
            flights: list[float] = []
            with trio.move_on_after(3.5):
                while True:
                    data, _ = await r.browser.sock.recvfrom(2048)
                    if 20 <= data[0] < 64 and (not flights or trio.current_time() - flights[-1] > 0.5):
                        flights.append(trio.current_time() - start)
            assert flights == [
                pytest.approx(0, abs=0.1),
                pytest.approx(1, abs=0.1),
                pytest.approx(3, abs=0.1),
            ]
            assert r.media.dtls.counters.retransmits == 2
            nursery.cancel_scope.cancel()


async def test_random_datagrams_from_the_browser_never_end_the_call() -> None:
    """500 random datagrams of every first-byte class from the validated browser address, and
    a burst of short/huge ones: the tasks survive, count them, and good media still flows."""
    rng = random.Random(7)
    with trio.fail_after(15):
        async with rig() as r, trio.open_nursery() as nursery:
            await connect(r, nursery)
            r.media.set_sip_remote(SipRemote(r.phone.getsockname(), r.phone_rtcp.getsockname(), PCMU))
            for i in range(500):
                first = rng.choice([0, 1, 3, 20, 22, 23, 63, 64, 128, 129, 191, 200, 255])
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
                await r.browser.sock.sendto(bytes([first]) + body, r.browser.bridge)
                if i % 50 == 0:
                    await trio.sleep(0.005)
            await r.browser.sock.sendto(b"\x80" * 1400, r.browser.bridge)
            await r.browser.send_rtp(9, 1440, b"\x66" * 160)
            data, _ = await r.phone.recvfrom(2048)
            while data[12:] != b"\x66" * 160:  # random "RTP" can't pass SRTP auth, but be sure
                data, _ = await r.phone.recvfrom(2048)
            stats = r.media.stats()
            assert stats.dtls_state is DtlsState.CONNECTED
            d = stats.demux
            assert d.stun + d.dtls + d.rtp + d.rtcp + d.unknown >= 502  # every datagram was read
            assert d.unknown > 50
            assert stats.to_sip.packets == 1
            assert stats.to_sip.dropped_total > 100
            nursery.cancel_scope.cancel()


async def test_a_bug_in_a_plane_handler_ends_this_call_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plane runs the call's handlers; one that raises (a bug, not bad input) is unregistered
    and its task raises the error (the call ends with 500), while the plane keeps serving."""
    with trio.fail_after(10):
        async with rig() as r:
            with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="relay bug")):
                async with trio.open_nursery() as nursery:
                    await connect(r, nursery)
                    r.media.set_sip_remote(SipRemote(r.phone.getsockname(), r.phone_rtcp.getsockname(), PCMU))

                    def broken(relay: object, buf: object, n: object, now: object) -> None:
                        raise RuntimeError("relay bug")

                    monkeypatch.setattr(Relay, "sip_rtp_in", broken)
                    await r.phone.sendto(rtp(1, 0, 0x2222, b"\x00" * 160), ("127.0.0.1", r.sip_rtp_port))
                    await trio.sleep_forever()
            assert r.media.keys_ready
            assert r.media.stats().dtls_state is DtlsState.CONNECTED


async def test_close_wakes_the_media_tasks() -> None:
    """close() from another task: run_ice_dtls ends the call (487), run_relay returns."""
    with trio.fail_after(10):
        async with rig() as r:
            relay_returned = trio.Event()

            async def relay() -> None:
                await r.media.run_relay()
                relay_returned.set()

            with pytest.RaisesGroup(pytest.RaisesExc(MediaEnded, match="closed")):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(r.browser.run)
                    await r.browser.check()
                    r.browser.dtls.start(trio.current_time())
                    await r.browser.flush()
                    await nursery.start(r.media.run_ice_dtls)
                    nursery.start_soon(relay)
                    await trio.sleep(0.05)
                    r.media.close()
                    await trio.sleep_forever()
            assert relay_returned.is_set()


async def test_a_backlog_is_drained_in_a_few_plane_passes() -> None:
    """One datagram per socket per pass, unless the socket was already served in the previous
    pass (a backlog): 200 packets queued at once on the SIP port all reach the browser, in order,
    in a handful of passes, not 200."""
    with trio.fail_after(10):
        async with rig() as r, trio.open_nursery() as nursery:
            await connect(r, nursery)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as burst:
                burst.bind(("127.0.0.1", 0))
                r.media.set_sip_remote(SipRemote(burst.getsockname(), r.phone_rtcp.getsockname(), PCMU))
                before = r.plane.counters.passes
                bridge_rtp = ("127.0.0.1", r.sip_rtp_port)
                for i in range(200):  # no checkpoint: all queued before the plane looks
                    burst.sendto(rtp(i, 160 * i, 0x2222, bytes([i % 256]) * 160), bridge_rtp)
                while len(r.browser.received) < 200:
                    await trio.sleep(0.01)
            assert [p[12] for p in r.browser.received] == [i % 256 for i in range(200)]
            assert r.plane.counters.passes - before < 20
            nursery.cancel_scope.cancel()


async def test_dtls_objects_are_released_on_time_without_more_packets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The browser leg's timer task wakes at the DTLS endpoint's `release_at` (rtp.dtls frees
    OpenSSL's objects RELEASE_AFTER seconds after the handshake), not at the next consent check."""
    with trio.fail_after(100):
        async with rig() as r, trio.open_nursery() as nursery:
            await connect(r, nursery)
            release_at = r.media.dtls.release_at
            assert release_at is not None
            assert not r.media.dtls.released
            await trio.sleep_until(release_at + 0.01)  # no STUN, DTLS or media meanwhile
            assert r.media.dtls.released
            nursery.cancel_scope.cancel()
