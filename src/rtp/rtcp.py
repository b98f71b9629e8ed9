"""RTCP compound packets (RFC 3550 §6): parsing for inspection, and in-place SSRC rewriting.

The relay does not terminate RTCP; it passes each compound packet through to the other leg after
rewriting the SSRCs that name a stream it rewrote (the SIP side's changing SSRCs become the one
SSRC the browser knows, and the browser's reports about that SSRC are mapped back), so that both
ends see reports about streams they actually exchange. Only the SSRC-carrying fields of the types
below are touched; everything else passes unchanged.

Per packet type (first 4 bytes: V=2|P|count(5) | PT(8) | length in 32-bit words minus one):

* SR 200 (§6.4.1): sender SSRC, 20 bytes of sender info (NTP, RTP timestamp, counts), then
  `count` report blocks of 24 bytes whose first word is the reported source's SSRC.
* RR 201 (§6.4.2): sender SSRC then `count` report blocks.
* SDES 202 (§6.5): `count` chunks, each an SSRC then items up to a null item, padded to 32 bits.
* BYE 203 (§6.6): `count` SSRCs, then an optional reason.
* APP 204 (§6.7), XR 207 (RFC 3611): the sender SSRC in the first word after the header.
* RTPFB 205 / PSFB 206 (RFC 4585 §6.1): sender SSRC, then the media source's SSRC.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from rtp.errors import RtpParseError
from rtp.packet import Buffer

__all__ = [
    "ReportBlock",
    "RtcpPacket",
    "RtcpType",
    "SenderInfo",
    "parse_compound_untrusted",
    "rewrite_ssrcs",
    "walk_untrusted",
]

_U32 = struct.Struct("!I")
_SENDER_INFO = struct.Struct("!QIII")
_REPORT = struct.Struct("!IIIIII")
_REPORT_LENGTH = 24
_SENDER_INFO_LENGTH = 20


class RtcpType(enum.IntEnum):
    """RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1, RFC 3611)."""

    SR = 200
    RR = 201
    SDES = 202
    BYE = 203
    APP = 204
    RTPFB = 205
    PSFB = 206
    XR = 207


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int
    cumulative_lost: int  # 24-bit signed
    highest_sequence: int
    jitter: int
    last_sr: int
    delay_since_last_sr: int


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """The sender information of an SR (RFC 3550 §6.4.1)."""

    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int


@dataclass(frozen=True, slots=True)
class RtcpPacket:
    """One packet of a compound RTCP datagram.

    `ssrc` is the sender's SSRC (the first SDES chunk's or BYE's first SSRC for those types, None
    when the packet carries none); `ssrcs` lists every SSRC field in wire order; `raw` is the
    whole packet, header included.
    """

    packet_type: int
    count: int
    ssrc: int | None
    ssrcs: tuple[int, ...]
    sender_info: SenderInfo | None
    reports: tuple[ReportBlock, ...]
    raw: bytes


def walk_untrusted(buf: Buffer) -> list[tuple[int, int, int, int]]:
    """Split a compound RTCP datagram into `(packet_type, count, offset, length)` tuples.

    Checks every header: version 2, a length that fits, padding only on the last packet
    (RFC 3550 §6.4.1, appendix A.2). Raises only `RtpParseError`.
    """
    n = len(buf)
    if n < 4:
        raise RtpParseError(f"RTCP packet too short: {n} bytes")
    out: list[tuple[int, int, int, int]] = []
    off = 0
    while off < n:
        if n - off < 4:
            raise RtpParseError(f"RTCP trailing {n - off} bytes at offset {off}: not a packet header")
        b0 = buf[off]
        if b0 >> 6 != 2:
            raise RtpParseError(f"RTCP version {b0 >> 6} at offset {off}, expected 2")
        length = 4 * (((buf[off + 2] << 8) | buf[off + 3]) + 1)
        if off + length > n:
            raise RtpParseError(f"RTCP packet at offset {off} claims {length} bytes, {n - off} left")
        if b0 & 0x20 and off + length != n:
            raise RtpParseError(f"RTCP padding bit on packet at offset {off}, which is not the last")
        pt = buf[off + 1]
        if not 192 <= pt <= 223:
            raise RtpParseError(f"RTCP packet type {pt} at offset {off} outside 192-223")
        out.append((pt, b0 & 0x1F, off, length))
        off += length
    return out


def _sdes_chunk_offsets(buf: Buffer, off: int, length: int, count: int) -> list[int]:
    """Offsets of the SSRC word of each SDES chunk (RFC 3550 §6.5)."""
    end = off + length
    pos = off + 4
    chunks: list[int] = []
    for _ in range(count):
        if pos + 4 > end:
            raise RtpParseError(f"SDES chunk at offset {pos} truncated")
        chunks.append(pos)
        pos += 4
        while True:
            if pos >= end:
                raise RtpParseError("SDES item list not terminated by a null item")
            if buf[pos] == 0:
                pos += 1
                pos = (pos + 3) & ~3  # chunks are padded to a 32-bit boundary
                break
            if pos + 2 > end or pos + 2 + buf[pos + 1] > end:
                raise RtpParseError(f"SDES item at offset {pos} overruns the packet")
            pos += 2 + buf[pos + 1]
    return chunks


def _ssrc_offsets(buf: Buffer, pt: int, count: int, off: int, length: int) -> list[int]:
    """Offsets of every SSRC field of one packet, validated against its length."""
    match pt:
        case RtcpType.SR | RtcpType.RR:
            first = off + 8 + (_SENDER_INFO_LENGTH if pt == RtcpType.SR else 0)
            if first + _REPORT_LENGTH * count > off + length:
                raise RtpParseError(
                    f"RTCP {RtcpType(pt).name} with {count} report blocks overruns its length"
                )
            return [off + 4] + [first + _REPORT_LENGTH * i for i in range(count)]
        case RtcpType.SDES:
            return _sdes_chunk_offsets(buf, off, length, count)
        case RtcpType.BYE:
            if 4 + 4 * count > length:
                raise RtpParseError(f"RTCP BYE with {count} SSRCs overruns its length")
            return [off + 4 + 4 * i for i in range(count)]
        case RtcpType.RTPFB | RtcpType.PSFB:
            if length < 12:
                raise RtpParseError("RTCP feedback packet shorter than 12 bytes")
            return [off + 4, off + 8]
        case _:
            if length < 8:
                raise RtpParseError(f"RTCP packet type {pt} shorter than 8 bytes")
            return [off + 4]


def parse_compound_untrusted(data: Buffer) -> tuple[RtcpPacket, ...]:
    """Decode a compound RTCP datagram; raises only `RtpParseError`."""
    packets: list[RtcpPacket] = []
    for pt, count, off, length in walk_untrusted(data):
        offsets = _ssrc_offsets(data, pt, count, off, length)
        ssrcs = tuple(int(_U32.unpack_from(data, o)[0]) for o in offsets)
        sender_info = None
        reports: tuple[ReportBlock, ...] = ()
        if pt in (RtcpType.SR, RtcpType.RR):
            if pt == RtcpType.SR:
                ntp, rtp_ts, pkts, octets = _SENDER_INFO.unpack_from(data, off + 8)
                sender_info = SenderInfo(ntp, rtp_ts, pkts, octets)
            blocks = []
            for o in offsets[1:]:
                ssrc, lost, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, o)
                cumulative = lost & 0xFFFFFF
                if cumulative & 0x800000:
                    cumulative -= 0x1000000
                blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
            reports = tuple(blocks)
        packets.append(
            RtcpPacket(
                packet_type=pt,
                count=count,
                ssrc=ssrcs[0] if ssrcs else None,
                ssrcs=ssrcs,
                sender_info=sender_info,
                reports=reports,
                raw=bytes(data[off : off + length]),
            )
        )
    return tuple(packets)


def rewrite_ssrcs(
    buf: bytearray | memoryview,
    ssrc_map: Mapping[int, int],
    sr_timestamp_delta: Mapping[int, int] | None = None,
) -> int:
    """Rewrite, in place, every SSRC field found in `ssrc_map` (old -> new); return how many.

    `sr_timestamp_delta` maps an original sender SSRC to the offset the relay added to that
    stream's RTP timestamps, so the SR's RTP timestamp stays consistent with the rewritten stream
    (RFC 3550 §6.4.1: it corresponds to the same instant as the NTP timestamp).
    Validates the whole datagram before touching it; raises only `RtpParseError`.
    """
    targets: list[tuple[int, int, int]] = []  # (offset, pt, index within packet)
    for pt, count, off, length in walk_untrusted(buf):
        for i, o in enumerate(_ssrc_offsets(buf, pt, count, off, length)):
            targets.append((o, pt, i))
    changed = 0
    for o, pt, i in targets:
        old = int(_U32.unpack_from(buf, o)[0])
        new = ssrc_map.get(old)
        if new is None:
            continue
        _U32.pack_into(buf, o, new)
        changed += 1
        if pt == RtcpType.SR and i == 0 and sr_timestamp_delta:
            delta = sr_timestamp_delta.get(old)
            if delta is not None:
                ts = int(_U32.unpack_from(buf, o + 12)[0])
                _U32.pack_into(buf, o + 12, (ts + delta) & 0xFFFFFFFF)
    return changed
