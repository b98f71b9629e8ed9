"""MCCP v1 messages: one frozen, slotted dataclass per message type (pure).

Page -> bridge: :class:`Call`, :class:`Dtmf`, :class:`HangupRequest`, :class:`Ping`.
Bridge -> page: :class:`Trying`, :class:`Ringing`, :class:`Progress`, :class:`Answer`,
:class:`Hangup`, :class:`ErrorReply`, :class:`Pong`.

Each constructor validates its values (the rules of docs/mccp.md, "Messages" and "Limits") and
raises :class:`~mccp.errors.ParseError` (a ``ValueError``) naming the field, so a message object
that exists is always valid. The JSON ``type`` of each class is its ``TYPE`` class variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from .errors import ErrorCode, ParseError
from .limits import (
    MAX_DIGITS,
    MAX_NUMBER_CHARS,
    MAX_PASSWORD_CHARS,
    MAX_REASON_CHARS,
    MAX_SDP_CHARS,
)

# A number or extension: the characters a dial string needs, nothing SIP would have to escape.
_NUMBER_RE = re.compile(r"[0-9A-Za-z+*#._-]+")
# RFC 4733 section 3.2 events 0-15: 0-9, *, #, A-D.
_DIGITS_RE = re.compile(r"[0-9*#A-D]+")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _check_text(name: str, value: str, *, max_chars: int, min_chars: int = 1) -> None:
    if len(value) > max_chars:
        raise ParseError(ErrorCode.TOO_BIG, f"field '{name}' is {len(value)} characters, over {max_chars}")
    if len(value) < min_chars:
        raise ParseError(ErrorCode.BAD_MESSAGE, f"field '{name}' is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON allows lone surrogates ("\ud800"); they cannot go into SIP or a log line.
        raise ParseError(ErrorCode.BAD_MESSAGE, f"field '{name}' contains a lone surrogate") from None


def _check_line(name: str, value: str, *, max_chars: int, min_chars: int = 1) -> None:
    _check_text(name, value, max_chars=max_chars, min_chars=min_chars)
    if _CONTROL_RE.search(value):
        raise ParseError(ErrorCode.BAD_MESSAGE, f"field '{name}' contains a control character")


def _check_number(name: str, value: str) -> None:
    _check_text(name, value, max_chars=MAX_NUMBER_CHARS)
    if not _NUMBER_RE.fullmatch(value):
        raise ParseError(
            ErrorCode.BAD_MESSAGE, f"field '{name}' may hold only 0-9 A-Z a-z + * # . _ - characters"
        )


def _check_sdp(value: str) -> None:
    _check_text("sdp", value, max_chars=MAX_SDP_CHARS)
    # RFC 8866 section 5: an SDP description starts with the "v=0" line.
    if not value.startswith("v=0"):
        raise ParseError(ErrorCode.BAD_MESSAGE, "field 'sdp' is not an SDP description (must start 'v=0')")


def _check_code(value: int) -> None:
    if not 100 <= value <= 699:
        raise ParseError(ErrorCode.BAD_MESSAGE, f"field 'code' is {value}, not in 100-699")


# ----------------------------------------------------------------------------- page -> bridge


@dataclass(frozen=True, slots=True)
class Call:
    """Place a call from ``clr`` (authenticated by ``pwd``) to ``cld``, with the page's SDP offer."""

    TYPE: ClassVar[str] = "call"
    clr: str
    pwd: str = field(repr=False)
    cld: str
    sdp: str

    def __post_init__(self) -> None:
        _check_number("clr", self.clr)
        _check_line("pwd", self.pwd, max_chars=MAX_PASSWORD_CHARS)
        _check_number("cld", self.cld)
        _check_sdp(self.sdp)


@dataclass(frozen=True, slots=True)
class Dtmf:
    """Send DTMF ``digits`` out of band (RFC 4733 events 0-9, ``*``, ``#``, A-D)."""

    TYPE: ClassVar[str] = "dtmf"
    digits: str

    def __post_init__(self) -> None:
        _check_text("digits", self.digits, max_chars=MAX_DIGITS)
        if not _DIGITS_RE.fullmatch(self.digits):
            raise ParseError(ErrorCode.BAD_MESSAGE, "field 'digits' may hold only 0-9 * # A B C D")


@dataclass(frozen=True, slots=True)
class HangupRequest:
    """The page ends the call (or abandons it before it was answered)."""

    TYPE: ClassVar[str] = "hangup"


@dataclass(frozen=True, slots=True)
class Ping:
    """Application keep-alive; the bridge answers :class:`Pong`."""

    TYPE: ClassVar[str] = "ping"


# ----------------------------------------------------------------------------- bridge -> page


@dataclass(frozen=True, slots=True)
class Trying:
    """The call is being placed (SIP 100)."""

    TYPE: ClassVar[str] = "trying"


@dataclass(frozen=True, slots=True)
class Ringing:
    """The called party is alerted (SIP 180); the page plays ringback unless it has early media."""

    TYPE: ClassVar[str] = "ringing"


@dataclass(frozen=True, slots=True)
class Progress:
    """The bridge's SDP answer before the call is answered (early media, SIP 183)."""

    TYPE: ClassVar[str] = "progress"
    sdp: str

    def __post_init__(self) -> None:
        _check_sdp(self.sdp)


@dataclass(frozen=True, slots=True)
class Answer:
    """The call is answered (SIP 200); ``sdp`` is the bridge's final SDP answer."""

    TYPE: ClassVar[str] = "answer"
    sdp: str

    def __post_init__(self) -> None:
        _check_sdp(self.sdp)


@dataclass(frozen=True, slots=True)
class Hangup:
    """The call ended; ``code`` follows SIP (403 bad password, 486 busy, 487 cancelled...)."""

    TYPE: ClassVar[str] = "hangup"
    code: int
    reason: str

    def __post_init__(self) -> None:
        _check_code(self.code)
        _check_line("reason", self.reason, max_chars=MAX_REASON_CHARS, min_chars=0)


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The last page message was not accepted; ``reason`` says what was wrong with it."""

    TYPE: ClassVar[str] = "error"
    code: int
    reason: str

    def __post_init__(self) -> None:
        _check_code(self.code)
        _check_line("reason", self.reason, max_chars=MAX_REASON_CHARS, min_chars=0)


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to :class:`Ping`."""

    TYPE: ClassVar[str] = "pong"


PageMessage = Call | Dtmf | HangupRequest | Ping
BridgeMessage = Trying | Ringing | Progress | Answer | Hangup | ErrorReply | Pong

PAGE_TYPES: dict[str, type[PageMessage]] = {cls.TYPE: cls for cls in (Call, Dtmf, HangupRequest, Ping)}
BRIDGE_TYPES: dict[str, type[BridgeMessage]] = {
    cls.TYPE: cls for cls in (Trying, Ringing, Progress, Answer, Hangup, ErrorReply, Pong)
}
