"""MCCP error codes and exception types.

The split follows h11: a :class:`RemoteProtocolError` means the page sent something wrong
(answer it with an MCCP ``error`` carrying :attr:`~ProtocolError.code`); a
:class:`LocalProtocolError` means our own code tried to send a message the protocol does not
allow now (a bug in the caller). :class:`ParseError` is the only exception the untrusted decoder
raises; it is a :class:`RemoteProtocolError` and a :class:`ValueError`.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """MCCP error codes carried by ``error`` (and, for 408, ``hangup``) messages.

    The numbers borrow the meaning of the HTTP/SIP status with the same number; docs/mccp.md is
    the authority.
    """

    BAD_MESSAGE = 400
    """Invalid JSON, not an object, unknown ``type``, missing or wrong-typed field, bad value."""
    CALL_TIMEOUT = 408
    """No ``call`` arrived within the server's call timeout (sent in a ``hangup``)."""
    WRONG_STATE = 409
    """A valid message that is not allowed in the session's current state."""
    TOO_BIG = 413
    """A frame or a field is larger than the limit."""
    BINARY_FRAME = 415
    """A binary WebSocket frame: MCCP uses text frames only."""
    RATE_LIMITED = 429
    """Too many messages per second; the message was dropped."""
    SERVER_ERROR = 500
    """The bridge failed while handling the message."""
    UNSUPPORTED_VERSION = 505
    """The ``v`` field names a protocol version this bridge does not speak."""


class ProtocolError(Exception):
    """Base of the MCCP protocol errors; carries the MCCP error ``code`` and a ``reason``."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{int(code)} {reason}")
        self.code = code
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """We tried to send a message the protocol does not allow now (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The page sent a message that is malformed or not allowed now."""


class ParseError(RemoteProtocolError, ValueError):
    """An untrusted MCCP text could not be decoded into a valid message."""
