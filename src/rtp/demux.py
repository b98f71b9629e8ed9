"""RFC 7983 demultiplexing of the browser port: STUN, DTLS, RTP and RTCP share one UDP socket.

RFC 7983 section 7 sorts a datagram by its first byte B:

    B in [0, 3]     -> STUN          (RFC 8489: the top two bits of the message type are zero)
    B in [16, 19]   -> ZRTP          (not used by WebRTC: dropped)
    B in [20, 63]   -> DTLS          (record content types 20-63)
    B in [64, 79]   -> TURN channel  (not used by an ICE-lite host candidate: dropped)
    B in [128, 191] -> RTP or RTCP   (version 2)
    anything else   -> drop

Within [128, 191], RTCP is told from RTP by the second byte (RFC 5761 section 4, rtcp-mux): RTCP
packet types 192-223 fall on RTP payload types 64-95 once the marker bit is masked off, a range
that RTP payload types must then avoid.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import assert_never

__all__ = ["DemuxCounters", "PacketKind", "classify"]


class PacketKind(enum.Enum):
    """What a datagram on the browser port is."""

    STUN = "stun"
    DTLS = "dtls"
    RTP = "rtp"
    RTCP = "rtcp"
    UNKNOWN = "unknown"


def classify(data: bytes | bytearray | memoryview) -> PacketKind:
    """Classify one datagram by its first byte (RFC 7983 section 7) and, for RTP/RTCP, its
    second byte (RFC 5761 section 4). Never raises; empty or unknown input is UNKNOWN."""
    if not data:
        return PacketKind.UNKNOWN
    first = data[0]
    if first <= 3:
        return PacketKind.STUN
    if 20 <= first <= 63:
        return PacketKind.DTLS
    if 128 <= first <= 191:
        if len(data) < 2:
            return PacketKind.UNKNOWN
        # RFC 5761 section 4: payload type 64-95 (marker bit masked) means RTCP PT 192-223.
        if 64 <= (data[1] & 0x7F) <= 95:
            return PacketKind.RTCP
        return PacketKind.RTP
    return PacketKind.UNKNOWN


@dataclass(slots=True)
class DemuxCounters:
    """Datagrams seen on the browser port, by kind."""

    stun: int = 0
    dtls: int = 0
    rtp: int = 0
    rtcp: int = 0
    unknown: int = 0

    def count(self, kind: PacketKind) -> None:
        """Add one datagram of `kind`."""
        match kind:
            case PacketKind.STUN:
                self.stun += 1
            case PacketKind.DTLS:
                self.dtls += 1
            case PacketKind.RTP:
                self.rtp += 1
            case PacketKind.RTCP:
                self.rtcp += 1
            case PacketKind.UNKNOWN:
                self.unknown += 1
            case _:
                assert_never(kind)
