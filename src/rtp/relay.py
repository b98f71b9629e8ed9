"""The media relay's per-packet logic: SRTP <-> RTP with payload type, SSRC, sequence and timestamp
rewriting, optional PCMU <-> PCMA transcoding, and per-direction counters. Pure and synchronous:
the Trio edge (`rtp.media`) owns the sockets, passes each datagram in with `now`, and sends what
comes back. Nothing here raises on bad input: a refused packet returns None and is counted.

Theory of operation
-------------------

Browser -> SIP (`Relay.browser_rtp` / `browser_rtcp`):
    SRTP is authenticated and decrypted (RFC 3711 §3.3), the RTP header checked, and the payload
    type mapped through `CodecMap.to_sip` (e.g. telephone-event 126 -> 101, RFC 4733 §2.1 keeps the
    8000 Hz clock); PCMU is transcoded to PCMA (or back) when the SIP side accepted only the other
    law. Payload types not in the map (opus, CN, the 48 kHz telephone-event...) are dropped and
    counted. The browser's SSRC, sequence numbers and timestamps pass unchanged. SRTCP is
    decrypted and report blocks about our browser-facing SSRC are mapped to the SIP stream's SSRC.

SIP -> browser (`Relay.sip_rtp` / `sip_rtcp`):
    The SIP side's stream may change SSRC or jump in sequence/timestamp at any time (music on hold,
    transfer, re-INVITE, a PBX switching sources). The browser must see ONE stream: a WebRTC
    receiver keyed by SSRC would otherwise stall or glitch. So every packet leaves with our SSRC
    and `seq_out = seq_in + seq_delta`, `ts_out = ts_in + ts_delta` (mod 2**16 / 2**32). On a new
    source (another SSRC, or a jump beyond RFC 3550 A.1's MAX_DROPOUT/MAX_MISORDER, or a timestamp
    running backwards while the sequence advances, or a "late" packet more than `RESTART_GAP`
    seconds after the last one) the deltas are recomputed so that the sequence
    continues at last+1 and the timestamp at last + elapsed time (`now`) in clock units (at least
    one frame), and the marker bit is set (RFC 3551 §4.1: first packet of a talkspurt). Packets
    of the previous SSRC arriving within `STALE_GRACE` seconds of a switch are late stragglers
    and are dropped rather than switching back and forth. RTP is then protected (SRTP) with our
    key. RTCP from the SIP side gets the SSRCs of the streams we rewrote mapped to ours, the SR's
    RTP timestamp shifted by the same delta, and its BYE packets removed (a BYE of an old source
    would end our one continuing stream at the browser); then it is protected as SRTCP.

Reception statistics: each direction's `LegCounters.reception` (rtp.reception) sees every
well-formed, authenticated RTP packet as it arrives, before the payload type routing: packets
expected and lost from the sequence numbers (RFC 3550 A.3, per SSRC, so the SIP side's source
changes start new counts) and the interarrival jitter (A.8) with the arrival `now` and the codec
map's clock rate. About 0.4 us a packet.

Allocation: the browser->SIP path returns pylibsrtp's result unchanged when no rewrite is needed,
else one `bytearray` copy; the SIP->browser path rewrites the caller's buffer in place and copies
once into `bytes` because pylibsrtp accepts nothing else.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from rtp import g711
from rtp.errors import RtpParseError, SrtpError, SrtpErrorKind
from rtp.packet import FIXED_HEADER, FIXED_HEADER_TAIL, RTP_HEADER_LENGTH, check_untrusted, is_rtcp
from rtp.reception import ReceptionStats, SourceState
from rtp.rtcp import RtcpType, rewrite_ssrcs, walk_untrusted
from rtp.srtp import PacketBuffer, SrtpRx, SrtpTx

__all__ = [
    "CodecMap",
    "DropCause",
    "LegCounters",
    "LegIncrements",
    "PtRoute",
    "Relay",
    "RewriteState",
    "RouteTable",
    "SteadyArgs",
    "Transcode",
]

Datagram: TypeAlias = bytes | bytearray

MAX_DROPOUT = 3000  # RFC 3550 appendix A.1
MAX_MISORDER = 100
MAX_TIMESTAMP_JUMP = 8000 * 60  # a forward jump of over a minute at 8 kHz is a new source
STALE_GRACE = 0.5  # seconds during which the previous SSRC's stragglers are dropped
RESTART_GAP = 1.0  # seconds after which a "late" packet of the current SSRC means a restart
_SSRC_HISTORY = 16
SRTP_TRAILER_ROOM = 148  # the most SRTP/SRTCP may add (rtp.srtp)


class DropCause(enum.Enum):
    """Why the relay refused a packet."""

    MALFORMED = "malformed"
    UNKNOWN_PT = "unknown_pt"
    SRTP_AUTH = "srtp_auth"
    SRTP_REPLAY = "srtp_replay"
    NOT_FROM_PEER = "not_from_peer"  # counted by the edge, which knows the source address
    NOT_READY = "not_ready"  # before the SRTP keys are known
    STALE_STREAM = "stale_stream"  # late packet of the SIP side's previous SSRC


_SRTP_CAUSE = {
    SrtpErrorKind.AUTH: DropCause.SRTP_AUTH,
    SrtpErrorKind.REPLAY: DropCause.SRTP_REPLAY,
    SrtpErrorKind.MALFORMED: DropCause.MALFORMED,
}


@dataclass(slots=True)
class LegCounters:
    """Counters of one direction. `last_packet_time` (the `now` of the last forwarded RTP packet)
    drives the no-media timeout. `reception` measures the stream as it arrives at the relay
    (every well-formed, authenticated RTP packet, forwarded or not): packets expected and lost
    from the sequence numbers, interarrival jitter (RFC 3550 A.3, A.8; rtp.reception)."""

    packets: int = 0
    octets: int = 0
    rtcp_packets: int = 0
    last_packet_time: float | None = None
    dropped: dict[DropCause, int] = field(default_factory=lambda: dict.fromkeys(DropCause, 0))
    reception: ReceptionStats = field(default_factory=ReceptionStats)

    @property
    def expected(self) -> int:
        """RTP packets the sender sent, from the sequence numbers (RFC 3550 A.3)."""
        return self.reception.expected

    @property
    def lost(self) -> int:
        """Packets lost before the relay (expected - received; negative with duplicates)."""
        return self.reception.lost

    @property
    def jitter(self) -> float:
        """Interarrival jitter (RFC 3550 A.8) of the current source, in seconds."""
        return self.reception.jitter

    def drop(self, cause: DropCause) -> None:
        """Count one refused packet."""
        self.dropped[cause] += 1

    @property
    def dropped_total(self) -> int:
        """All refused packets."""
        return sum(self.dropped.values())


class Transcode(enum.Enum):
    """Payload conversion on a route."""

    NONE = "none"
    ULAW_TO_ALAW = "ulaw_to_alaw"
    ALAW_TO_ULAW = "alaw_to_ulaw"

    @property
    def table(self) -> bytes | None:
        """The `bytes.translate` table, None for no conversion."""
        match self:
            case Transcode.NONE:
                return None
            case Transcode.ULAW_TO_ALAW:
                return g711.ULAW_TO_ALAW
            case Transcode.ALAW_TO_ULAW:
                return g711.ALAW_TO_ULAW


@dataclass(frozen=True, slots=True)
class PtRoute:
    """Where one incoming payload type goes: the outgoing payload type and any transcoding."""

    out_pt: int
    transcode: Transcode = Transcode.NONE


@dataclass(frozen=True, slots=True)
class CodecMap:
    """The negotiated payload types between the legs, built by the SDP offer/answer code.

    `to_sip` maps the browser's payload types to the SIP side's, `to_browser` the reverse.
    `clock_rate` and `frame_samples` (ptime 20 ms) are those of the G.711 stream.
    """

    to_sip: Mapping[int, PtRoute]
    to_browser: Mapping[int, PtRoute]
    clock_rate: int = 8000
    frame_samples: int = 160

    @property
    def transcoding(self) -> bool:
        """Whether any route converts between PCMU and PCMA."""
        return any(
            r.transcode is not Transcode.NONE for r in (*self.to_sip.values(), *self.to_browser.values())
        )


RouteTable: TypeAlias = tuple[tuple[int, bytes | None] | None, ...]

# The state the C relay (rtp._steady) changes and hands back: max_in_seq, last_in_ts, last_out_seq,
# last_out_ts, last_out_time; and one direction's counters since its last hand-back: packets, octets,
# last_packet_time, then drops: unknown_pt, srtp_auth, srtp_replay, malformed.
RewriteState: TypeAlias = tuple[int, int, int, int, float | None]
LegIncrements: TypeAlias = tuple[int, int, float | None, int, int, int, int]
SteadyArgs: TypeAlias = tuple[
    tuple[int, int, int, int, object],
    RouteTable,
    RouteTable,
    tuple[int, float, bool, int, int, int, int, int, int, int, float | None],
    SourceState | None,
    SourceState | None,
]


def _route_table(routes: Mapping[int, PtRoute]) -> RouteTable:
    """The 128-entry lookup by payload type, shared by every call with the same routes."""
    return _shared_route_table(tuple(sorted(routes.items())))


@functools.lru_cache(maxsize=256)
def _shared_route_table(routes: tuple[tuple[int, PtRoute], ...]) -> RouteTable:
    # Most calls negotiate the same few maps: one table each, not two lists per call (2 KiB).
    table: list[tuple[int, bytes | None] | None] = [None] * 128
    for pt, route in routes:
        table[pt] = (route.out_pt, route.transcode.table)
    return tuple(table)


class Relay:
    """The per-call relay state: both directions, their counters, and the SRTP contexts.

    `ssrc`, `initial_sequence` and `initial_timestamp` are those of the stream we send to the
    browser; pass random values (RFC 3550 §5.1: random initial sequence and timestamp).
    The SRTP contexts arrive later with `start_srtp` (after the DTLS handshake); until then
    packets are dropped as NOT_READY.
    """

    # Slots: the attributes sit in the object itself (smaller, and fewer cache lines per packet).
    __slots__ = (
        "_clock_rate",
        "_in_ssrc",
        "_last_in_ts",
        "_last_out_seq",
        "_last_out_time",
        "_last_out_ts",
        "_max_in_seq",
        "_next_sequence",
        "_next_timestamp",
        "_prev_ssrc",
        "_rx",
        "_scratch",
        "_seq_delta",
        "_started",
        "_switch_time",
        "_to_browser",
        "_to_sip",
        "_ts_delta",
        "_ts_deltas",
        "_tx",
        "codec_map",
        "ssrc",
        "stream_changes",
        "to_browser",
        "to_sip",
    )

    def __init__(
        self,
        codec_map: CodecMap,
        *,
        ssrc: int,
        initial_sequence: int,
        initial_timestamp: int,
        srtp_tx: SrtpTx | None = None,
        srtp_rx: SrtpRx | None = None,
    ) -> None:
        self.to_sip = LegCounters()
        self.to_browser = LegCounters()
        self.ssrc = ssrc
        self._tx = srtp_tx
        self._rx = srtp_rx
        self.set_codec_map(codec_map)
        self._next_sequence = initial_sequence & 0xFFFF
        self._next_timestamp = initial_timestamp & 0xFFFFFFFF
        self._started = False
        self._in_ssrc = 0
        self._prev_ssrc: int | None = None
        self._switch_time: float | None = None
        self._seq_delta = 0
        self._ts_delta = 0
        self._max_in_seq = 0
        self._last_in_ts = 0
        self._last_out_seq = 0
        self._last_out_ts = 0
        self._last_out_time: float | None = None
        self._ts_deltas: dict[int, int] = {}  # SIP SSRC -> timestamp delta, for SR rewriting
        self.stream_changes = 0
        self._scratch: PacketBuffer | None = None  # the bytes API's work buffer (made on first use)

    def start_srtp(self, tx: SrtpTx, rx: SrtpRx) -> None:
        """Install the SRTP contexts (our key to protect, the browser's to unprotect)."""
        self._tx, self._rx = tx, rx

    def set_codec_map(self, codec_map: CodecMap) -> None:
        """Install a new payload type map (SIP answer, re-INVITE)."""
        self.codec_map = codec_map
        self._clock_rate = codec_map.clock_rate
        self._to_sip = _route_table(codec_map.to_sip)
        self._to_browser = _route_table(codec_map.to_browser)

    @property
    def sip_ssrc(self) -> int | None:
        """The SSRC of the SIP side's current stream, None before its first packet."""
        return self._in_ssrc if self._started else None

    # -- the C relay's hand-over (rtp._steady, used by rtp.media) ---------------------------

    def steady_args(self) -> SteadyArgs | None:
        """What `SteadyRelay.arm` takes to relay the steady stream as this object would; None
        before the SRTP keys. The C relay then owns the state until `absorb_steady`."""
        tx, rx = self._tx, self._rx
        if tx is None or rx is None:
            return None
        rewrite = (
            self.ssrc,
            float(self._clock_rate),
            self._started,
            self._in_ssrc,
            self._seq_delta & 0xFFFF,
            self._ts_delta & 0xFFFFFFFF,
            self._max_in_seq,
            self._last_in_ts,
            self._last_out_seq,
            self._last_out_ts,
            self._last_out_time,
        )
        return (
            (*rx.native, *tx.native, (rx, tx)),  # the C relay keeps the owners of the contexts alive
            self._to_sip,
            self._to_browser,
            rewrite,
            self.to_sip.reception.steady_source(),
            self.to_browser.reception.steady_source(),
        )

    def absorb_steady(
        self,
        rewrite: RewriteState,
        rec_to_sip: SourceState | None,
        rec_to_browser: SourceState | None,
        to_sip: LegIncrements,
        to_browser: LegIncrements,
    ) -> None:
        """Take the state back from the C relay (`SteadyRelay.collect`)."""
        self._max_in_seq, self._last_in_ts, self._last_out_seq, self._last_out_ts, self._last_out_time = (
            rewrite
        )
        self.to_sip.reception.absorb_steady_source(rec_to_sip)
        self.to_browser.reception.absorb_steady_source(rec_to_browser)
        for leg, (packets, octets, last, unknown_pt, auth, replay, malformed) in (
            (self.to_sip, to_sip),
            (self.to_browser, to_browser),
        ):
            leg.packets += packets
            leg.octets += octets
            if last is not None:
                leg.last_packet_time = last
            if unknown_pt or auth or replay or malformed:  # rare (an Enum key hashes in Python)
                dropped = leg.dropped
                dropped[DropCause.UNKNOWN_PT] += unknown_pt
                dropped[DropCause.SRTP_AUTH] += auth
                dropped[DropCause.SRTP_REPLAY] += replay
                dropped[DropCause.MALFORMED] += malformed

    # -- browser -> SIP ---------------------------------------------------------------------

    def browser_rtp(self, srtp: bytes | bytearray | memoryview, now: float) -> Datagram | None:
        """An SRTP packet from the browser -> the RTP packet for the SIP side, or None (counted)."""
        buf = self._scratch_with(srtp, self.to_sip)
        if buf is None:
            return None
        n = self.browser_rtp_in(buf, len(srtp), now)
        return bytes(buf.view[:n]) if n else None

    def browser_rtp_in(self, buf: PacketBuffer, n: int, now: float) -> int:
        """`browser_rtp` in place: the SRTP packet in `buf`'s first `n` bytes becomes the RTP
        packet for the SIP side; returns its length, 0 if refused (counted)."""
        c = self.to_sip
        rx = self._rx
        if rx is None:
            c.drop(DropCause.NOT_READY)
            return 0
        try:
            n = rx.unprotect_in(buf, n)
        except SrtpError as exc:
            c.drop(_SRTP_CAUSE[exc.kind])
            return 0
        data = buf.data
        # Fast path: a bare 12-byte header (no CSRC, extension or padding), as browsers send
        # when no header extension was negotiated; anything else gets the full check.
        if n >= RTP_HEADER_LENGTH and data[0] == 0x80:
            start, end = RTP_HEADER_LENGTH, n
        else:
            try:
                start, end = check_untrusted(buf.view[:n])
            except RtpParseError:
                c.drop(DropCause.MALFORMED)
                return 0
        _b0, b1, seq, ts, ssrc = FIXED_HEADER.unpack_from(data)
        c.reception.packet(ssrc, seq, ts, now, self._clock_rate)
        pt = b1 & 0x7F
        route = self._to_sip[pt]
        if route is None:
            c.drop(DropCause.UNKNOWN_PT)
            return 0
        out_pt, table = route
        if out_pt != pt:
            data[1] = (b1 & 0x80) | out_pt
        if table is not None:
            data[start:end] = data[start:end].translate(table)
        c.packets += 1
        c.octets += n
        c.last_packet_time = now
        return n

    def _scratch_with(self, packet: bytes | bytearray | memoryview, leg: LegCounters) -> PacketBuffer | None:
        """The bytes API's buffer (made on first use) holding a copy of `packet`; None if too long."""
        buf = self._scratch
        if buf is None:
            buf = self._scratch = PacketBuffer()
        n = len(packet)
        if n > len(buf) - SRTP_TRAILER_ROOM:
            leg.drop(DropCause.MALFORMED)
            return None
        buf.data[:n] = packet
        return buf

    def browser_rtcp(self, srtcp: bytes | memoryview, now: float) -> Datagram | None:
        """An SRTCP packet from the browser -> the RTCP packet for the SIP side, or None."""
        c = self.to_sip
        if self._rx is None:
            c.drop(DropCause.NOT_READY)
            return None
        try:
            out = bytearray(self._rx.unprotect_rtcp(srtcp))
            if self._started:
                # Reports about the stream we send the browser are about the SIP side's stream.
                rewrite_ssrcs(out, {self.ssrc: self._in_ssrc})
            else:
                walk_untrusted(out)
        except SrtpError as exc:
            c.drop(_SRTP_CAUSE[exc.kind])
            return None
        except RtpParseError:
            c.drop(DropCause.MALFORMED)
            return None
        c.rtcp_packets += 1
        return out

    def browser_packet(self, srtp_or_srtcp: bytes, now: float) -> tuple[bool, Datagram] | None:
        """Demultiplex (RFC 5761 §4) and relay: `(is_rtcp, datagram for SIP)` or None."""
        if len(srtp_or_srtcp) < 2:
            self.to_sip.drop(DropCause.MALFORMED)
            return None
        if is_rtcp(srtp_or_srtcp):
            out = self.browser_rtcp(srtp_or_srtcp, now)
            return None if out is None else (True, out)
        out = self.browser_rtp(srtp_or_srtcp, now)
        return None if out is None else (False, out)

    # -- SIP -> browser ---------------------------------------------------------------------

    def sip_rtp(self, packet: bytes | bytearray | memoryview, now: float | None) -> bytes | None:
        """A datagram from the SIP side's RTP socket -> SRTP (or SRTCP) for the browser, or None.

        RTCP arriving on the RTP port (a peer that muxes anyway) is recognised (RFC 5761 §4) and
        handled as `sip_rtcp`.
        """
        buf = self._scratch_with(packet, self.to_browser)
        if buf is None:
            return None
        m = self.sip_rtp_in(buf, len(packet), now)
        return bytes(buf.view[:m]) if m else None

    def sip_rtp_in(self, buf: PacketBuffer, n: int, now: float | None) -> int:
        """`sip_rtp` in place: the datagram in `buf`'s first `n` bytes becomes the SRTP (or SRTCP)
        packet for the browser; returns its length, 0 if refused (counted)."""
        c = self.to_browser
        tx = self._tx
        if tx is None:
            c.drop(DropCause.NOT_READY)
            return 0
        if n < RTP_HEADER_LENGTH:
            c.drop(DropCause.MALFORMED)
            return 0
        data = buf.data
        b0, b1, seq, ts, ssrc = FIXED_HEADER.unpack_from(data)
        if b0 != 0x80:  # not the bare fixed header: full check (version, CSRC, extension, padding)
            try:
                check_untrusted(buf.view[:n])
            except RtpParseError:
                c.drop(DropCause.MALFORMED)
                return 0
        if 192 <= b1 <= 223:  # RFC 5761 §4: RTCP
            srtcp = self.sip_rtcp(buf.view[:n], now)
            if srtcp is None:
                return 0
            data[: len(srtcp)] = srtcp
            return len(srtcp)
        c.reception.packet(ssrc, seq, ts, now, self._clock_rate)
        route = self._to_browser[b1 & 0x7F]
        if route is None:
            c.drop(DropCause.UNKNOWN_PT)
            return 0
        forward = True
        new_stream = False
        if ssrc == self._in_ssrc and self._started:
            d = ((seq - self._max_in_seq + 0x8000) & 0xFFFF) - 0x8000
            if -MAX_MISORDER <= d <= MAX_DROPOUT:
                forward = d > 0
                if forward:
                    dts = ((ts - self._last_in_ts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
                    new_stream = dts < 0 or dts > MAX_TIMESTAMP_JUMP
                elif (
                    now is not None
                    and self._last_out_time is not None
                    and now - self._last_out_time > RESTART_GAP
                ):
                    # Not a late packet (those trail by milliseconds): the source restarted its
                    # numbering after a pause, e.g. across a re-INVITE.
                    new_stream = forward = True
            else:
                new_stream = True
        elif (
            self._started
            and ssrc == self._prev_ssrc
            and now is not None
            and self._switch_time is not None
            and now - self._switch_time < STALE_GRACE
        ):
            c.drop(DropCause.STALE_STREAM)
            return 0
        else:
            new_stream = True
        if new_stream:
            self._new_stream(ssrc, seq, ts, now)
        out_seq = (seq + self._seq_delta) & 0xFFFF
        out_ts = (ts + self._ts_delta) & 0xFFFFFFFF
        out_pt, table = route
        marker = 0x80 if new_stream else b1 & 0x80
        FIXED_HEADER_TAIL.pack_into(data, 1, marker | out_pt, out_seq, out_ts, self.ssrc)
        if table is not None:
            start, end = check_untrusted(buf.view[:n])
            data[start:end] = data[start:end].translate(table)
        try:
            m = tx.protect_in(buf, n)
        except SrtpError as exc:
            c.drop(_SRTP_CAUSE[exc.kind])
            return 0
        if forward:
            self._max_in_seq = seq
            self._last_in_ts = ts
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._last_out_time = now
        c.packets += 1
        c.octets += m
        if now is not None:
            c.last_packet_time = now
        return m

    def _new_stream(self, ssrc: int, seq: int, ts: int, now: float | None) -> None:
        if self._started:
            step = self.codec_map.frame_samples
            if now is not None and self._last_out_time is not None:
                step = max(step, round((now - self._last_out_time) * self.codec_map.clock_rate))
            out_seq = (self._last_out_seq + 1) & 0xFFFF
            out_ts = (self._last_out_ts + step) & 0xFFFFFFFF
            if ssrc != self._in_ssrc:
                self._prev_ssrc, self._switch_time = self._in_ssrc, now
            self.stream_changes += 1
        else:
            out_seq, out_ts = self._next_sequence, self._next_timestamp
        self._started = True
        self._in_ssrc = ssrc
        self._seq_delta = out_seq - seq
        self._ts_delta = out_ts - ts
        self._ts_deltas.pop(ssrc, None)
        self._ts_deltas[ssrc] = self._ts_delta
        while len(self._ts_deltas) > _SSRC_HISTORY:
            del self._ts_deltas[next(iter(self._ts_deltas))]
        # Make the first packet of the new source count as "forward" for the bookkeeping.
        self._max_in_seq = (seq - 1) & 0xFFFF
        self._last_in_ts = ts

    def sip_rtcp(self, data: bytes | bytearray | memoryview, now: float | None) -> bytes | None:
        """A datagram from the SIP side's RTCP socket -> SRTCP for the browser, or None (counted)."""
        c = self.to_browser
        if self._tx is None:
            c.drop(DropCause.NOT_READY)
            return None
        try:
            parts = walk_untrusted(data)
            kept = [(off, n) for pt, _count, off, n in parts if pt != RtcpType.BYE]
            if not kept:
                return None  # only a BYE: nothing the browser should see
            out = (
                bytearray(data)
                if len(kept) == len(parts)
                else bytearray().join(data[off : off + n] for off, n in kept)
            )
            rewrite_ssrcs(out, dict.fromkeys(self._ts_deltas, self.ssrc), self._ts_deltas)
            srtcp = self._tx.protect_rtcp(bytes(out))
        except RtpParseError:
            c.drop(DropCause.MALFORMED)
            return None
        except SrtpError as exc:
            c.drop(_SRTP_CAUSE[exc.kind])
            return None
        c.rtcp_packets += 1
        return srtcp
