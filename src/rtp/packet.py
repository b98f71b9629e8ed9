"""RTP packets (RFC 3550 §5.1): a parser/serializer and allocation-free header rewriting.

Two layers:

* `RtpPacket` is a frozen dataclass for tests, tools and anything off the hot path:
  `RtpPacket.parse_untrusted(data)` validates everything (version, CSRC count, header extension,
  padding) and raises only `RtpParseError`; `bytes(packet)` serializes it back.
* The relay's hot path never builds objects. `check_untrusted(buf)` validates a datagram and
  returns the payload bounds; the `get_*`/`set_*` functions read and write the fixed-offset header
  fields of a `bytearray`/`memoryview` in place.

RFC 5761 §4 (RTP and RTCP on one port): an RTCP packet's second octet is its packet type
(SR 200, RR 201, SDES 202, BYE 203, APP 204, RTPFB 205, PSFB 206, XR 207); masked with 0x7f as an
RTP marker+PT it reads 64-95, a range RTP payload types must therefore avoid. `is_rtcp` uses that.

Header layout::

     0                   1                   2                   3
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    |                           timestamp                           |
    |                             SSRC                              |
    |                  CSRC list (CC x 32 bits)                     |
    | extension profile (16) | extension length in words (16) | ... |
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeAlias

from rtp.errors import RtpParseError

__all__ = [
    "FIXED_HEADER",
    "FIXED_HEADER_TAIL",
    "RTP_HEADER_LENGTH",
    "RTP_VERSION",
    "RtpPacket",
    "check_untrusted",
    "get_marker",
    "get_payload_type",
    "get_sequence",
    "get_ssrc",
    "get_timestamp",
    "is_rtcp",
    "set_marker",
    "set_payload_type",
    "set_sequence",
    "set_ssrc",
    "set_timestamp",
]

RTP_VERSION = 2
RTP_HEADER_LENGTH = 12

Buffer: TypeAlias = bytes | bytearray | memoryview
WritableBuffer: TypeAlias = bytearray | memoryview

_HEAD = struct.Struct("!BBHII")
FIXED_HEADER = _HEAD
"""The fixed 12-byte header as (b0, b1, sequence, timestamp, ssrc), for one-call unpacking."""
FIXED_HEADER_TAIL = struct.Struct("!BHII")
"""Bytes 1-11 as (marker|pt, sequence, timestamp, ssrc): `pack_into(buf, 1, ...)` rewrites them."""
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def is_rtcp(buf: Buffer) -> bool:
    """True if a datagram on an rtcp-mux port is RTCP rather than RTP (RFC 5761 §4).

    The second octet of RTCP is its packet type, 192-223 (marker set, PT 64-95): SR/RR/SDES/BYE/
    APP are 72-76 once masked, the feedback and XR types 77-79. `buf` must hold at least 2 bytes.
    """
    return 192 <= buf[1] <= 223


def check_untrusted(buf: Buffer) -> tuple[int, int]:
    """Validate an RTP packet without copying it; return `(payload_start, payload_end)`.

    Raises `RtpParseError` for anything that is not a well-formed RTP version 2 packet
    (RFC 3550 §5.1 and the validity checks of appendix A.1).
    """
    n = len(buf)
    if n < RTP_HEADER_LENGTH:
        raise RtpParseError(f"RTP packet too short: {n} bytes, the fixed header is 12")
    b0 = buf[0]
    if b0 >> 6 != RTP_VERSION:
        raise RtpParseError(f"RTP version {b0 >> 6}, expected 2")
    start = RTP_HEADER_LENGTH + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        # RFC 3550 §5.3.1: a 16-bit profile field and a 16-bit length in 32-bit words follow the CSRCs.
        if n < start + 4:
            raise RtpParseError(f"RTP header extension header truncated at {n} bytes")
        start += 4 + 4 * ((buf[start + 2] << 8) | buf[start + 3])
    if start > n:
        raise RtpParseError(f"RTP header of {start} bytes exceeds the {n}-byte packet")
    end = n
    if b0 & 0x20:
        # RFC 3550 §5.1: the last octet of the padding counts the padding octets, itself included.
        pad = buf[n - 1]
        if pad == 0 or start + pad > n:
            raise RtpParseError(f"RTP padding count {pad} invalid for a {n - start}-byte payload area")
        end = n - pad
    return start, end


def get_payload_type(buf: Buffer) -> int:
    """The 7-bit payload type."""
    return buf[1] & 0x7F


def get_marker(buf: Buffer) -> bool:
    """The marker bit."""
    return bool(buf[1] & 0x80)


def get_sequence(buf: Buffer) -> int:
    """The 16-bit sequence number."""
    return (buf[2] << 8) | buf[3]


def get_timestamp(buf: Buffer) -> int:
    """The 32-bit RTP timestamp."""
    return int(_U32.unpack_from(buf, 4)[0])


def get_ssrc(buf: Buffer) -> int:
    """The 32-bit synchronization source."""
    return int(_U32.unpack_from(buf, 8)[0])


def set_payload_type(buf: WritableBuffer, pt: int) -> None:
    """Set the payload type in place, keeping the marker bit."""
    buf[1] = (buf[1] & 0x80) | pt


def set_marker(buf: WritableBuffer, marker: bool) -> None:
    """Set or clear the marker bit in place."""
    buf[1] = (buf[1] | 0x80) if marker else (buf[1] & 0x7F)


def set_sequence(buf: WritableBuffer, seq: int) -> None:
    """Set the sequence number in place (taken modulo 2**16)."""
    buf[2] = (seq >> 8) & 0xFF
    buf[3] = seq & 0xFF


def set_timestamp(buf: WritableBuffer, ts: int) -> None:
    """Set the RTP timestamp in place (taken modulo 2**32)."""
    _U32.pack_into(buf, 4, ts & 0xFFFFFFFF)


def set_ssrc(buf: WritableBuffer, ssrc: int) -> None:
    """Set the SSRC in place."""
    _U32.pack_into(buf, 8, ssrc)


@dataclass(frozen=True, slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1), fully decoded.

    `extension` is `(profile, data)` for a header extension (data a multiple of 4 bytes), `padding`
    the number of padding octets (0 for none; the pad bytes serialize as zeros and the count).
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} out of range 0-127")
        if not 0 <= self.sequence <= 0xFFFF:
            raise ValueError(f"sequence {self.sequence} out of range")
        if not 0 <= self.timestamp <= 0xFFFFFFFF or not 0 <= self.ssrc <= 0xFFFFFFFF:
            raise ValueError("timestamp and SSRC are 32-bit unsigned")
        if len(self.csrcs) > 15:
            raise ValueError(f"{len(self.csrcs)} CSRCs, at most 15")
        if self.extension is not None and len(self.extension[1]) % 4:
            raise ValueError("header extension data must be a multiple of 4 bytes")
        if not 0 <= self.padding <= 255:
            raise ValueError(f"padding {self.padding} out of range 0-255")

    @classmethod
    def parse_untrusted(cls, data: Buffer) -> RtpPacket:
        """Decode a datagram; raises only `RtpParseError`."""
        start, end = check_untrusted(data)
        b0, b1, seq, ts, ssrc = _HEAD.unpack_from(data, 0)
        cc = b0 & 0x0F
        csrcs = struct.unpack_from(f"!{cc}I", data, RTP_HEADER_LENGTH) if cc else ()
        extension = None
        if b0 & 0x10:
            off = RTP_HEADER_LENGTH + 4 * cc
            profile = _U16.unpack_from(data, off)[0]
            extension = (int(profile), bytes(data[off + 4 : start]))
        return cls(
            payload_type=b1 & 0x7F,
            sequence=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[start:end]),
            marker=bool(b1 & 0x80),
            csrcs=tuple(int(c) for c in csrcs),
            extension=extension,
            padding=len(data) - end,
        )

    def serialize(self) -> bytes:
        """Encode the packet."""
        b0 = (RTP_VERSION << 6) | len(self.csrcs)
        if self.padding:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        out = bytearray(
            _HEAD.pack(
                b0,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence,
                self.timestamp,
                self.ssrc,
            )
        )
        for csrc in self.csrcs:
            out += _U32.pack(csrc)
        if self.extension is not None:
            profile, data = self.extension
            out += _U16.pack(profile) + _U16.pack(len(data) // 4) + data
        out += self.payload
        if self.padding:
            out += bytes(self.padding - 1) + bytes((self.padding,))
        return bytes(out)

    def __bytes__(self) -> bytes:
        return self.serialize()
