"""The C relay of the steady stream (`rtp._steady`) against the Python relay (`rtp.relay`).

Contract: on any sequence of datagrams from either leg, a `SteadyRelay` (armed as `rtp.media` arms
it, with its own `Relay` handling what it punts) sends exactly the bytes the Python relay would, and
ends with exactly the same counters, reception statistics and rewriting state; it never crashes.

`Pair` is the harness, also used by tests/unit/rtp/test_rtp_steady.py: the reference relay, and the
C one over two datagram socket pairs (its twins). The fuzz input is a sequence of length-prefixed
datagrams (`fuzz.dtls_demux.datagrams`); the first byte of each picks the leg (browser raw, browser
SRTP-protected, SIP) and the time step, the rest is the datagram.
"""

from __future__ import annotations

import socket
import struct

from fuzz.dtls_demux import datagrams
from rtp import _steady
from rtp.errors import SrtpError
from rtp.relay import CodecMap, LegCounters, PtRoute, Relay, Transcode
from rtp.srtp import PacketBuffer, SrtpProfile, SrtpRx, SrtpTx, srtp_pair

KEY_BROWSER = bytes(range(30))  # 16-byte key + 14-byte salt (AES-CM); GCM takes 16 + 12
KEY_OURS = bytes(range(100, 130))
MAPS = {
    "plain": CodecMap(
        to_sip={0: PtRoute(0), 8: PtRoute(8), 126: PtRoute(101)},
        to_browser={0: PtRoute(0), 8: PtRoute(8), 101: PtRoute(126)},
    ),
    "transcoding": CodecMap(
        to_sip={0: PtRoute(8, Transcode.ULAW_TO_ALAW), 126: PtRoute(101)},
        to_browser={8: PtRoute(0, Transcode.ALAW_TO_ULAW), 101: PtRoute(126)},
    ),
}


def rtp(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes = bytes(range(160)), marker: bool = False
) -> bytes:
    """An RTP packet with a bare 12-byte header."""
    b1 = (0x80 if marker else 0) | pt
    return struct.pack("!BBHII", 0x80, b1, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def python_browser(relay: Relay, buf: PacketBuffer, n: int, now: float) -> bytes | None:
    """What rtp.media does with a datagram from the browser's nominated address (relay part)."""
    data = buf.data
    if n < 2 or not 127 < data[0] < 192:
        return None  # STUN, DTLS or unknown: not the relay's
    if 64 <= data[1] & 0x7F <= 95:
        out = relay.browser_rtcp(bytes(data[:n]), now)
        return None if out is None else bytes(out)
    m = relay.browser_rtp_in(buf, n, now)
    return bytes(data[:m]) if m else None


def python_sip(relay: Relay, buf: PacketBuffer, n: int, now: float) -> bytes | None:
    """What rtp.media does with a datagram from the SIP side's latched RTP source."""
    m = relay.sip_rtp_in(buf, n, now)
    return bytes(buf.data[:m]) if m else None


def same_leg(a: LegCounters, b: LegCounters) -> None:
    """Every counter and statistic of two directions is equal."""
    assert (a.packets, a.octets, a.rtcp_packets, a.last_packet_time) == (
        b.packets,
        b.octets,
        b.rtcp_packets,
        b.last_packet_time,
    )
    assert a.dropped == b.dropped
    ra, rb = a.reception, b.reception
    assert (ra.expected, ra.lost, ra.jitter, ra.max_jitter) == (
        rb.expected,
        rb.lost,
        rb.jitter,
        rb.max_jitter,
    )
    assert ra.steady_source() == rb.steady_source()


class Pair:
    """The reference relay and the C one, fed the same datagrams."""

    def __init__(self, profile: SrtpProfile, codec_map: CodecMap, shared: bool = False) -> None:
        """`shared`: no browser twin (rtp.browser_port without connected twins): the browser side is an
        unconnected UDP socket (the shared port) the C relay sends from to `browser_dest`, and the
        browser's datagrams are handed in with `browser_in` once in the buffer."""
        n = profile.key_length + profile.salt_length
        key_browser, key_ours = KEY_BROWSER[:n], KEY_OURS[:n]
        kwargs = {"ssrc": 0x11223344, "initial_sequence": 4000, "initial_timestamp": 99}
        self.ref = Relay(codec_map, **kwargs)
        self.ref.start_srtp(*srtp_pair(profile, key_ours, key_browser))
        self.c = Relay(codec_map, **kwargs)
        self.c.start_srtp(*srtp_pair(profile, key_ours, key_browser))
        self.browser_tx = SrtpTx(profile, key_browser)  # the browser's sending context
        self.browser_rx = SrtpRx(profile, key_ours)  # ...and its receiving one
        self.shared = shared
        if shared:
            self.b_twin, self.b_peer = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
            self.b_twin.bind(("127.0.0.1", 0))
            self.b_peer.bind(("127.0.0.1", 0))
        else:
            self.b_twin, self.b_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s_twin, self.s_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (self.b_twin, self.b_peer, self.s_twin, self.s_peer):
            s.setblocking(False)
        self.buf = PacketBuffer()
        self.ref_buf = PacketBuffer()
        self.rearm = True  # after a punt, as rtp.media does
        self.relay = _steady.SteadyRelay(
            self.b_twin.fileno(),
            self.s_twin.fileno(),
            self.buf.data,
            self._browser_punt,
            self._sip_punt,
            self.b_peer.getsockname() if shared else None,
        )
        self.arm()

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        for s in (self.b_twin, self.b_peer, self.s_twin, self.s_peer):
            s.close()

    def arm(self) -> None:
        args = self.c.steady_args()
        assert args is not None
        self.relay.arm(*args)

    def collect(self) -> None:
        collected = self.relay.collect()
        if collected is not None:
            rewrite, rec_sip, rec_browser, to_sip, to_browser, _media = collected
            self.c.absorb_steady(rewrite, rec_sip, rec_browser, to_sip, to_browser)
        assert not self.relay.armed

    def _browser_punt(self, n: int, now: float) -> None:
        self.collect()
        out = python_browser(self.c, self.buf, n, now)
        if out is not None:
            self.s_twin.send(out)
        if self.rearm:
            self.arm()

    def _sip_punt(self, n: int, now: float) -> None:
        self.collect()
        out = python_sip(self.c, self.buf, n, now)
        if out is not None:
            if self.shared:
                self.b_twin.sendto(out, self.b_peer.getsockname())
            else:
                self.b_twin.send(out)
        if self.rearm:
            self.arm()

    def _reference(self, datagram: bytes) -> int:
        self.ref_buf.data[: len(datagram)] = datagram
        return len(datagram)

    @staticmethod
    def _read(sock: socket.socket) -> bytes | None:
        try:
            return sock.recv(4096)
        except BlockingIOError:
            return None

    def from_browser(self, datagram: bytes, now: float) -> tuple[bytes | None, bytes | None]:
        """(what the Python relay sends to SIP, what the C one sent) for one browser datagram."""
        want = python_browser(self.ref, self.ref_buf, self._reference(datagram), now)
        if self.shared:  # the shared port's demultiplexer read it into the buffer
            self.buf.data[: len(datagram)] = datagram
            assert self.relay.browser_in(len(datagram), now) is True
        else:
            self.b_peer.send(datagram)
            assert self.relay.browser(now) is True
            assert self.relay.browser(now) is False  # drained
        return want, self._read(self.s_peer)

    def from_sip(self, datagram: bytes, now: float) -> tuple[bytes | None, bytes | None]:
        """(what the Python relay sends to the browser, what the C one sent) for one SIP datagram."""
        want = python_sip(self.ref, self.ref_buf, self._reference(datagram), now)
        self.s_peer.send(datagram)
        assert self.relay.sip(now) is True
        assert self.relay.sip(now) is False
        return want, self._read(self.b_peer)

    def check_same_state(self) -> None:
        """Both relays' counters, statistics and rewriting state are equal (the C one collected)."""
        armed = self.relay.armed
        self.collect()
        if armed:
            self.arm()
        same_leg(self.ref.to_sip, self.c.to_sip)
        same_leg(self.ref.to_browser, self.c.to_browser)
        for name in Relay.__slots__:
            if name not in ("_rx", "_tx", "_scratch", "to_sip", "to_browser"):
                assert getattr(self.ref, name) == getattr(self.c, name), name


def one_input(data: bytes) -> None:
    """Feed both relays the datagram sequence; every output and the final state must agree."""
    grams = datagrams(data)
    profile = list(SrtpProfile)[len(grams) % 2]
    with Pair(profile, MAPS["plain" if len(grams) % 3 else "transcoding"]) as pair:
        now = 10.0
        for gram in grams:
            if not gram:
                continue
            head, body = gram[0], gram[1:]
            now += (0.0, 0.02, 0.02, 0.3, 1.5)[(head >> 2) % 5]
            match head % 4:
                case 0:
                    want, got = pair.from_browser(body, now)
                case 1 | 2:
                    try:
                        srtp = pair.browser_tx.protect(body)
                    except SrtpError:
                        continue
                    want, got = pair.from_browser(srtp, now)
                case _:
                    want, got = pair.from_sip(body, now)
            assert want == got
        pair.check_same_state()
