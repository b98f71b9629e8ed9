"""Errors of the media plane (`rtp` package).

Following h11/trio: a network parser raises only a `ParseError` subclass (a `ValueError` with a
precise message); `RemoteProtocolError` means the peer did something we cannot accept and carries a
SIP status hint for the reply; `LocalProtocolError` means our own misuse of an API.
"""

from __future__ import annotations

import enum


class ParseError(ValueError):
    """Bytes or text from the network could not be parsed. The message says what and where."""


class RtpParseError(ParseError):
    """An RTP or RTCP packet is malformed (RFC 3550 §5.1, §6.4)."""


class SdpParseError(ParseError):
    """An SDP body is malformed (RFC 8866 §5)."""


class DtmfParseError(ParseError):
    """An RFC 4733 telephone-event payload is malformed."""


class LocalProtocolError(Exception):
    """We misused an API or asked for something impossible (our bug, not the peer's)."""


class RemoteProtocolError(Exception):
    """The peer's (well-formed) input cannot be accepted.

    `status_hint` is the SIP status (or MCCP `code`) to answer with, e.g. 488 Not Acceptable Here
    for an offer without a common codec.
    """

    def __init__(self, message: str, *, status_hint: int = 488) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class NegotiationError(RemoteProtocolError):
    """SDP offer/answer failed: no common codec, no usable audio stream, bad ICE/DTLS attributes."""


class SrtpErrorKind(enum.Enum):
    """Why an SRTP/SRTCP packet was refused."""

    AUTH = "auth"  # authentication tag mismatch (RFC 3711 §3.3 step 5)
    REPLAY = "replay"  # index already seen or too old (RFC 3711 §3.3.2)
    MALFORMED = "malformed"  # too short, too long or not RTP/RTCP at all


class SrtpError(Exception):
    """An SRTP or SRTCP packet could not be protected or unprotected; `kind` says why."""

    def __init__(self, kind: SrtpErrorKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind


class PortsExhausted(Exception):
    """No free UDP port (or even/odd pair) is left in the configured media range.

    The bridge answers the call with 503 Service Unavailable.
    """

    status_hint = 503
