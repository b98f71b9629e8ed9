"""MCCP size limits and the per-connection message rate limiter (pure).

The field caps are part of the protocol (docs/mccp.md, "Limits"); the server's own knobs
(frame size, rate, timeouts) live in :class:`mccp.server.ServerLimits`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: The only protocol version this bridge speaks (the optional ``v`` field).
PROTOCOL_VERSION = 1
#: Largest text frame the codec accepts, in characters (the server may set a lower cap).
MAX_MESSAGE_CHARS = 65536
#: Largest SDP in ``call``, ``progress``, ``answer`` (characters). Browser offers are 2-8 KiB.
MAX_SDP_CHARS = 32768
#: ``clr`` and ``cld``: the SIP user part of a number or extension.
MAX_NUMBER_CHARS = 64
#: ``pwd``.
MAX_PASSWORD_CHARS = 128
#: ``digits`` in one ``dtmf`` message.
MAX_DIGITS = 32
#: ``reason`` in ``hangup`` and ``error``.
MAX_REASON_CHARS = 256
#: Largest JSON nesting depth accepted before parsing (a flat object needs 1).
MAX_JSON_DEPTH = 8


@dataclass(slots=True)
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` stored.

    Time is passed in (``now`` in seconds, any monotonic origin). Starts full.
    """

    rate: float
    burst: float
    now: float
    _tokens: float = field(init=False)
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("TokenBucket needs rate > 0 and burst >= 1")
        self._tokens = self.burst
        self._last = self.now

    def allow(self, now: float) -> bool:
        """Take one token if there is one at ``now``; False means: drop the message."""
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
