"""RFC 4733 telephone events (DTMF) in RTP: the 4-byte event payload, and event sequences.

Payload (RFC 4733 §2.3)::

     0                   1                   2                   3
    |     event     |E|R|  volume   |          duration             |

`event` 0-9 are the digits, 10 `*`, 11 `#`, 12-15 `A`-`D`, 16 flash (§3.2). `volume` is the
power level in -dBm0 (0-63), `duration` in timestamp units since the event began (the RTP
timestamp of every packet of one event is the event's start). The relay only remaps the payload
type of these packets; this module lets tests and the bridge build and read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtp.errors import DtmfParseError

__all__ = ["DIGITS", "DtmfEvent", "events_for_digit"]

DIGITS = "0123456789*#ABCD"
FLASH = 16


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One telephone-event payload (RFC 4733 §2.3)."""

    event: int
    end: bool = False
    volume: int = 10
    duration: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.event <= 255:
            raise ValueError(f"event {self.event} out of range 0-255")
        if not 0 <= self.volume <= 63:
            raise ValueError(f"volume {self.volume} out of range 0-63")
        if not 0 <= self.duration <= 0xFFFF:
            raise ValueError(f"duration {self.duration} out of range 0-65535")

    @property
    def digit(self) -> str | None:
        """The DTMF character (0-9 * # A-D), None for other events."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None

    @classmethod
    def parse_untrusted(cls, payload: bytes | bytearray | memoryview) -> DtmfEvent:
        """Decode a 4-byte event payload; raises only `DtmfParseError`.

        The R bit is reserved: senders MUST set it to zero and receivers MUST ignore it (§2.3).
        """
        if len(payload) != 4:
            raise DtmfParseError(f"telephone-event payload of {len(payload)} bytes, expected 4")
        return cls(
            event=payload[0],
            end=bool(payload[1] & 0x80),
            volume=payload[1] & 0x3F,
            duration=(payload[2] << 8) | payload[3],
        )

    def serialize(self) -> bytes:
        """Encode the payload (R bit zero)."""
        return bytes(
            (
                self.event,
                (0x80 if self.end else 0) | self.volume,
                self.duration >> 8,
                self.duration & 0xFF,
            )
        )

    def __bytes__(self) -> bytes:
        return self.serialize()


def events_for_digit(
    digit: str,
    *,
    duration_ms: int = 100,
    volume: int = 10,
    ptime_ms: int = 20,
    clock_rate: int = 8000,
    end_repeats: int = 3,
) -> list[DtmfEvent]:
    """The payloads of one key press, one per packet interval (RFC 4733 §2.5.1).

    Durations grow by one packet interval each packet; the final packet has the E bit and is
    sent `end_repeats` times (§2.5.1.4: the end packet SHOULD be retransmitted, three in all is
    the usual choice). All go out with the same RTP timestamp (the event's start) and only the
    first has the marker bit (§2.5.1.3).
    """
    upper = digit.upper()
    if len(upper) != 1 or upper not in DIGITS:
        raise ValueError(f"{digit!r} is not a DTMF digit (0-9 * # A-D)")
    event = DIGITS.index(upper)
    step = clock_rate * ptime_ms // 1000
    total = max(step, clock_rate * duration_ms // 1000)
    if total > 0xFFFF:
        raise ValueError(f"duration of {duration_ms} ms overflows the 16-bit field at {clock_rate} Hz")
    out = [DtmfEvent(event, False, volume, d) for d in range(step, total, step)]
    out += [DtmfEvent(event, True, volume, total)] * end_repeats
    return out
