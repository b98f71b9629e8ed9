"""Which source the SIP leg's media is taken from: symmetric RTP latching with strict learning.

RFC 4961 (symmetric RTP) lets the bridge send to wherever the SIP side's RTP really comes
from, which is what makes a phone behind NAT work. Latching onto the first datagram's source,
though, lets anyone who sprays the media port range during call set-up capture the leg (the
"RTP bleed" of Asterisk, CVE-2017-14099). `SourceLatch` decides per datagram, before the relay,
whether it is taken, following Asterisk's `strictrtp=yes` learning mode:

* Nothing latches on a datagram that is not valid RTP (RFC 3550 §5.1 and A.1, `check_untrusted`)
  with a payload type of the SIP answer (`payload_types`). Such datagrams are refused (counted).
* From the SDP's own IP address (c=), a valid packet latches at once, whatever its port (a NAT
  that rewrites ports only, RFC 4961).
* From another IP, the source must first send a learning run of `learning_packets` consecutive
  valid packets (same SSRC, sequence numbers each one more than the last, RFC 3550 A.1's
  "probation" of `MIN_SEQUENTIAL`), and only while nothing valid from the SDP's IP has arrived.
  The packets of the run are not relayed. Up to `MAX_CANDIDATES` foreign sources learn at once,
  so a sprayer cannot keep resetting a real one's run.
* Once latched, only the latched source is taken (plus the SDP's IP, which takes the leg back
  from a learned foreign source: the signalling is the authority). Everything else is refused.
* RTCP is taken from the SDP's RTCP address, or latches (once, on a valid compound packet,
  RFC 3550 A.2) to a port of the latched RTP source's IP; from any other IP it is refused.

No I/O, no clock: addresses and bytes go in, verdicts come out. A new SIP answer with another
address builds a new latch; one with new payload types only calls `set_payload_types`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from rtp.errors import RtpParseError
from rtp.packet import FIXED_HEADER, check_untrusted, is_rtcp
from rtp.rtcp import walk_untrusted
from rtp.stun import Address

__all__ = [
    "LEARNING_PACKETS",
    "MAX_CANDIDATES",
    "LatchCounters",
    "SourceLatch",
    "Verdict",
]

LEARNING_PACKETS = 4  # Asterisk's `probation` default; RFC 3550 A.1 uses MIN_SEQUENTIAL = 2
MAX_CANDIDATES = 8  # foreign sources learning at the same time


class Verdict(enum.Enum):
    """What to do with one datagram from the SIP side."""

    ACCEPT = "accept"  # relay it (the source is, or has just become, the latched one)
    LEARNING = "learning"  # a valid packet of a foreign source's learning run: not relayed
    INVALID = "invalid"  # not valid RTP/RTCP, or a payload type the answer did not negotiate
    UNKNOWN_SOURCE = "unknown-source"  # a source that may not (or may no longer) send


@dataclass(slots=True)
class LatchCounters:
    """What the latch decided (ACCEPT is counted by the relay)."""

    latched: int = 0  # latch events (RTP and RTCP) onto a source other than the SDP's exact one
    invalid: int = 0  # refused before a latch: not RTP/RTCP, or a payload type not negotiated
    learning: int = 0  # valid packets held back during a foreign source's learning run
    unknown_source: int = 0  # refused for their source


@dataclass(slots=True)
class _Run:
    ssrc: int
    last_seq: int
    count: int


def _ip(addr: Address) -> str:
    host = addr[0]
    # An IPv4-mapped IPv6 source and the IPv4 of the SDP are the same host.
    return host[7:] if host.startswith("::ffff:") and "." in host else host


class SourceLatch:
    """The source check of one SIP answer's media (see the module docstring).

    `expected_rtp` / `expected_rtcp` come from the answer's SDP; `payload_types` are the SIP
    side's negotiated payload types (the keys of `CodecMap.to_browser`).
    """

    def __init__(
        self,
        expected_rtp: Address,
        expected_rtcp: Address,
        payload_types: Iterable[int],
        *,
        learning_packets: int = LEARNING_PACKETS,
    ) -> None:
        if learning_packets < 1:
            raise ValueError("learning_packets must be at least 1")
        self.expected_rtp = expected_rtp
        self.expected_rtcp = expected_rtcp
        self.learning_packets = learning_packets
        self.counters = LatchCounters()
        self.rtp_source: Address | None = None  # the latched RTP source
        self.rtcp_source: Address | None = None  # the latched RTCP source
        self._sdp_ip = _ip(expected_rtp)
        self._sdp_ip_seen = False
        self._candidates: dict[Address, _Run] = {}
        self._pts: frozenset[int] = frozenset()
        self.set_payload_types(payload_types)

    def set_payload_types(self, payload_types: Iterable[int]) -> None:
        """The answer's payload types changed (same address): keep the latch, check the new ones."""
        self._pts = frozenset(payload_types)

    # -- RTP ---------------------------------------------------------------------------------

    def rtp_untrusted(self, data: bytes | bytearray | memoryview, src: Address) -> Verdict:
        """The verdict on a datagram that arrived on the SIP leg's RTP port from `src`."""
        if src == self.rtp_source:
            return Verdict.ACCEPT  # the hot path: the relay validates the packet itself
        header = self._valid_rtp(data)
        if header is None:
            self.counters.invalid += 1
            return Verdict.INVALID
        ssrc, seq = header
        if _ip(src) == self._sdp_ip:
            # RFC 4961: from the address the SDP named (any port: a NAT rewriting ports).
            self._sdp_ip_seen = True
            self._candidates.clear()
            if self.rtp_source is not None and _ip(self.rtp_source) == self._sdp_ip:
                self.counters.unknown_source += 1  # another port of the SDP's host, once latched
                return Verdict.UNKNOWN_SOURCE
            self._latch_rtp(src)
            return Verdict.ACCEPT
        if self.rtp_source is not None or self._sdp_ip_seen:
            self.counters.unknown_source += 1
            return Verdict.UNKNOWN_SOURCE
        return self._learn(src, ssrc, seq)

    def _valid_rtp(self, data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
        """(SSRC, sequence) of a valid RTP packet with a negotiated payload type, else None."""
        try:
            check_untrusted(data)
        except RtpParseError:
            return None
        if is_rtcp(data):
            return None  # RFC 5761 §4: RTCP on the RTP port is not what latches RTP
        _b0, b1, seq, _ts, ssrc = FIXED_HEADER.unpack_from(data)
        if b1 & 0x7F not in self._pts:
            return None
        return ssrc, seq

    def _learn(self, src: Address, ssrc: int, seq: int) -> Verdict:
        run = self._candidates.get(src)
        if run is not None and run.ssrc == ssrc and seq == (run.last_seq + 1) & 0xFFFF:
            run.count += 1
            run.last_seq = seq
        else:
            if run is None and len(self._candidates) >= MAX_CANDIDATES:
                del self._candidates[next(iter(self._candidates))]  # the oldest learner
            run = self._candidates[src] = _Run(ssrc, seq, 1)
        if run.count >= self.learning_packets:
            self._candidates.clear()
            self._latch_rtp(src)
            return Verdict.ACCEPT
        self.counters.learning += 1
        return Verdict.LEARNING

    def _latch_rtp(self, src: Address) -> None:
        if src != self.expected_rtp:
            self.counters.latched += 1
        if self.rtcp_source is not None and _ip(self.rtcp_source) != _ip(src):
            self.rtcp_source = None  # RTCP follows the RTP source's host
        self.rtp_source = src

    # -- RTCP --------------------------------------------------------------------------------

    def rtcp_untrusted(self, data: bytes | bytearray | memoryview, src: Address) -> Verdict:
        """The verdict on a datagram that arrived on the SIP leg's RTCP port from `src`."""
        if src == self.rtcp_source:
            return Verdict.ACCEPT
        if self.rtcp_source is None and src == self.expected_rtcp:
            self.rtcp_source = src
            return Verdict.ACCEPT
        rtp = self.rtp_source
        if rtp is None or _ip(src) != _ip(rtp) or self.rtcp_source is not None:
            self.counters.unknown_source += 1
            return Verdict.UNKNOWN_SOURCE
        try:
            walk_untrusted(data)  # RFC 3550 A.2: a valid compound packet latches, nothing else
        except RtpParseError:
            self.counters.invalid += 1
            return Verdict.INVALID
        self.counters.latched += 1
        self.rtcp_source = src
        return Verdict.ACCEPT
