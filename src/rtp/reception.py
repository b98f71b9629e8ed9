"""Reception statistics of an RTP stream: packets expected and lost, interarrival jitter
(RFC 3550 appendix A.1, A.3 and A.8). Pure: the arrival time `now` (seconds) and the clock rate
are passed in with each packet.

Theory of operation
-------------------
One `SourceStats` per SSRC follows RFC 3550 A.1's `update_seq`: the highest sequence number
seen, extended by a count of 2**16 cycles when it wraps; a jump of more than MAX_DROPOUT ahead
(or more than MAX_MISORDER behind) is a "bad" packet, unless the next packet follows it, in
which case the source restarted its numbering and the counts re-sync on it (the counts so far are
kept). Then (A.3)::

    expected = extended highest sequence number - base sequence number + 1
    lost     = expected - received          (negative with duplicates, as A.3 allows)

Unlike A.1, a new source needs no probation (MIN_SEQUENTIAL): the relay only measures packets
that were authenticated (SRTP) or came from the negotiated address, so its first packet counts.

Interarrival jitter (A.8), in timestamp units: for each packet, transit = arrival (in clock units)
- RTP timestamp, D = |transit - previous transit|, J += (D - J) / 16. The first packet of a
source (or of a re-sync) only sets the reference transit.

`ReceptionStats` is one direction: sources by SSRC (a stream that changes SSRC, as the SIP side's
may on transfer or music on hold, starts a new source; a straggler of the previous SSRC goes to its
own), the counts summed over every source seen, and the jitter of the source heard last.
"""

from __future__ import annotations

import operator
from typing import TypeAlias, cast

__all__ = ["MAX_DROPOUT", "MAX_MISORDER", "ReceptionStats", "SourceState", "SourceStats"]

MAX_DROPOUT = 3000  # RFC 3550 appendix A.1
MAX_MISORDER = 100
RTP_SEQ_MOD = 1 << 16
_MAX_SOURCES = 16  # per direction; older sources are folded into the totals

# The current source handed to the C relay (rtp._steady) and back: ssrc, base_seq, max_seq, bad_seq,
# cycles, received, prior_expected, prior_received, transit, jitter, max_jitter.
SourceState: TypeAlias = tuple[int, int, int, int, int, int, int, int, float | None, float, float]
_STEADY_FIELDS = (  # SourceState after the SSRC, in its order (rtp/_steady.c parses the same)
    "base_seq",
    "max_seq",
    "bad_seq",
    "cycles",
    "received",
    "prior_expected",
    "prior_received",
    "transit",
    "jitter",
    "max_jitter",
)
_steady_fields = operator.attrgetter(*_STEADY_FIELDS)


class SourceStats:
    """RFC 3550 A.1 / A.3 / A.8 for one SSRC, started by its first packet.

    `update` is the whole algorithm; `ReceptionStats.packet` inlines its common case (the next
    packet in order) because it runs for every packet the relay sees."""

    __slots__ = (
        "bad_seq",
        "base_seq",
        "cycles",
        "jitter",
        "max_jitter",
        "max_seq",
        "prior_expected",
        "prior_received",
        "received",
        "transit",
    )

    def __init__(self, seq: int) -> None:
        self.prior_expected = 0  # counts before a re-sync
        self.prior_received = 0
        self.jitter = 0.0  # timestamp units
        self.max_jitter = 0.0
        self.base_seq = self.max_seq = self.cycles = self.received = 0
        self.bad_seq = RTP_SEQ_MOD + 1
        self.transit: float | None = None
        self._init_seq(seq)

    def _init_seq(self, seq: int) -> None:
        """A.1 init_seq (the first packet is counted: no probation)."""
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = RTP_SEQ_MOD + 1  # so that seq == bad_seq is false
        self.cycles = 0
        self.received = 1
        self.transit = None

    def update(self, seq: int, timestamp: int, arrival: float | None) -> None:
        """One packet: sequence number, RTP timestamp, arrival time in clock units (or None)."""
        udelta = (seq - self.max_seq) & 0xFFFF
        if udelta < MAX_DROPOUT:  # in order, with a permissible gap
            if seq < self.max_seq:
                self.cycles += RTP_SEQ_MOD  # the sequence number wrapped
            self.max_seq = seq
        elif udelta <= RTP_SEQ_MOD - MAX_MISORDER:  # a very large jump
            if seq != self.bad_seq:
                self.bad_seq = (seq + 1) & 0xFFFF
                return  # not counted until the next packet confirms it
            # Two sequential packets: the source restarted without telling us; re-sync on it.
            self.prior_expected += self._expected_since_sync()
            self.prior_received += self.received
            self._init_seq(seq)
            self.update_transit(timestamp, arrival)
            return
        # else: a duplicate or reordered packet (counted as received, A.1)
        self.received += 1
        self.update_transit(timestamp, arrival)

    def update_transit(self, timestamp: int, arrival: float | None) -> None:
        """A.8: J += (|D| - J) / 16, D the difference of two successive transit times."""
        if arrival is None:
            return
        transit = arrival - timestamp
        previous = self.transit
        self.transit = transit
        if previous is not None:
            self._add_transit_difference(transit - previous)

    def _add_transit_difference(self, d: float) -> None:
        if d < 0:
            d = -d
        if d > 2**31:  # the RTP timestamp is modulo 2**32: take the difference the short way
            d = abs((d + 2**31) % 2**32 - 2**31)
        jitter = self.jitter + (d - self.jitter) * 0.0625
        self.jitter = jitter
        if jitter > self.max_jitter:
            self.max_jitter = jitter

    def _expected_since_sync(self) -> int:
        return self.cycles + self.max_seq - self.base_seq + 1

    @property
    def expected(self) -> int:
        """A.3: extended highest sequence number - base sequence number + 1 (over re-syncs)."""
        return self.prior_expected + self._expected_since_sync()

    @property
    def total_received(self) -> int:
        """Packets counted as received (duplicates included, the unconfirmed jump excluded)."""
        return self.prior_received + self.received


class ReceptionStats:
    """One direction's reception statistics, over every SSRC it carried; see the module docstring."""

    __slots__ = ("_clock_rate", "_current", "_folded_expected", "_folded_received", "_sources", "_ssrc")

    def __init__(self) -> None:
        self._sources: dict[int, SourceStats] = {}
        self._current: SourceStats | None = None  # the source heard last, and its SSRC
        self._ssrc = -1
        self._clock_rate = 8000
        self._folded_expected = 0  # sources forgotten beyond _MAX_SOURCES
        self._folded_received = 0

    def packet(self, ssrc: int, seq: int, timestamp: int, now: float | None, clock_rate: int) -> None:
        """Account one received RTP packet; `now` in seconds (None: no jitter measurement)."""
        source = self._current
        if source is None or ssrc != self._ssrc:
            self._clock_rate = clock_rate
            self._ssrc = ssrc
            known = self._sources.get(ssrc)
            if known is None:
                self._current = source = self._sources[ssrc] = SourceStats(seq)
                source.update_transit(timestamp, now * clock_rate if now is not None else None)
                self._forget_old_sources()
                return
            self._current = source = known
        max_seq = source.max_seq
        udelta = (seq - max_seq) & 0xFFFF
        if not 0 < udelta < MAX_DROPOUT or now is None or source.transit is None:
            source.update(seq, timestamp, now * clock_rate if now is not None else None)
            return
        # The common case, inlined: the next packet in order (A.1), then A.8.
        if seq < max_seq:
            source.cycles += RTP_SEQ_MOD
        source.max_seq = seq
        source.received += 1
        transit = now * clock_rate - timestamp
        d = transit - source.transit
        source.transit = transit
        if d < 0:
            d = -d
        if d > 2**31:
            d = abs((d + 2**31) % 2**32 - 2**31)
        jitter = source.jitter
        jitter += (d - jitter) * 0.0625
        source.jitter = jitter
        if jitter > source.max_jitter:
            source.max_jitter = jitter

    def steady_source(self) -> SourceState | None:
        """The source heard last, for rtp._steady (which counts its packets while it relays)."""
        s = self._current
        if s is None:
            return None
        return cast("SourceState", (self._ssrc, *_steady_fields(s)))

    def absorb_steady_source(self, state: SourceState | None) -> None:
        """Take back what `steady_source` gave, as rtp._steady left it."""
        s = self._current
        if state is None or s is None or state[0] != self._ssrc:
            return
        for name, value in zip(_STEADY_FIELDS, state[1:], strict=True):
            setattr(s, name, value)

    def _forget_old_sources(self) -> None:
        while len(self._sources) > _MAX_SOURCES:
            oldest = self._sources.pop(next(iter(self._sources)))
            self._folded_expected += oldest.expected
            self._folded_received += oldest.total_received

    @property
    def jitter(self) -> float:
        """The interarrival jitter of the source heard last, in seconds (RFC 3550 A.8)."""
        return self._current.jitter / self._clock_rate if self._current is not None else 0.0

    @property
    def max_jitter(self) -> float:
        """The highest interarrival jitter any source reached, in seconds."""
        units = max((s.max_jitter for s in self._sources.values()), default=0.0)
        return units / self._clock_rate

    @property
    def expected(self) -> int:
        """Packets expected from the sequence numbers, summed over the sources (RFC 3550 A.3)."""
        return self._folded_expected + sum(s.expected for s in self._sources.values())

    @property
    def received(self) -> int:
        """Packets received (as RFC 3550 A.1 counts them), summed over the sources."""
        return self._folded_received + sum(s.total_received for s in self._sources.values())

    @property
    def lost(self) -> int:
        """expected - received (RFC 3550 A.3; negative when duplicates outnumber losses)."""
        return self.expected - self.received
