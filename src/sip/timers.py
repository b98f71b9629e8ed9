"""SIP transaction timers A-M derived from T1, T2 and T4 (RFC 3261 §17 and Table 4, RFC 6026 §8.4).

Public API: `Timer` (an Enum named by the RFC letters) and `TimerConfig(t1=0.5, t2=4.0, t4=5.0)`
with `TimerConfig.initial(timer, reliable)` giving the first duration of each timer. Timers
that RFC 3261 sets to zero over reliable transports return 0.0; the transactions then move on at
once instead of scheduling anything. Durations are in seconds; nothing here reads a clock.

| timer | meaning                                      | unreliable (UDP)    | reliable (TCP/TLS) |
|-------|----------------------------------------------|---------------------|--------------------|
| A     | INVITE request retransmit (doubles, no cap)  | T1                  | not used           |
| B     | INVITE transaction timeout                   | 64*T1               | 64*T1              |
| D     | wait for response retransmits (INVITE)       | 32 s (>= 64*T1)     | 0                  |
| E     | non-INVITE request retransmit (capped by T2) | T1                  | not used           |
| F     | non-INVITE transaction timeout               | 64*T1               | 64*T1              |
| G     | INVITE final response retransmit (cap T2)    | T1                  | not used           |
| H     | wait for ACK receipt                         | 64*T1               | 64*T1              |
| I     | wait for ACK retransmits                     | T4                  | 0                  |
| J     | wait for non-INVITE request retransmits      | 64*T1               | 0                  |
| K     | wait for response retransmits (non-INVITE)   | T4                  | 0                  |
| L     | wait for INVITE retransmits after 2xx (6026) | 64*T1               | 64*T1              |
| M     | wait for 2xx retransmits (RFC 6026)          | 64*T1               | 64*T1              |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import assert_never


class Timer(Enum):
    """The transaction timers, by their RFC 3261 / RFC 6026 letters."""

    A = "A"
    B = "B"
    D = "D"
    E = "E"
    F = "F"
    G = "G"
    H = "H"
    I = "I"  # noqa: E741 - the RFC's name
    J = "J"
    K = "K"
    L = "L"
    M = "M"


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1 (RTT estimate), T2 (max non-INVITE retransmit interval), T4 (max message lifetime)."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    def initial(self, timer: Timer, reliable: bool) -> float:
        """The first duration of `timer` (RFC 3261 Table 4); 0.0 means "fire at once"."""
        t1 = self.t1
        match timer:
            case Timer.A | Timer.E | Timer.G:
                return 0.0 if reliable else t1
            case Timer.B | Timer.F | Timer.H | Timer.L | Timer.M:
                return 64 * t1
            case Timer.D:
                # §17.1.1.2: "at least 32 seconds for unreliable transports".
                return 0.0 if reliable else max(32.0, 64 * t1)
            case Timer.I | Timer.K:
                return 0.0 if reliable else self.t4
            case Timer.J:
                return 0.0 if reliable else 64 * t1
            case _:
                assert_never(timer)

    def next_interval(self, timer: Timer, interval: float) -> float:
        """The retransmit interval after `interval`: A doubles without cap (§17.1.1.2);
        E and G double up to T2 (§17.1.2.2, §17.2.1)."""
        if timer is Timer.A:
            return 2 * interval
        return min(2 * interval, self.t2)
