"""MCCP: the browser-facing JSON call-control protocol (pure codec and session) and its WSS server.

The pure core is re-exported here; the Trio edge is :mod:`mccp.server` (``serve_mccp``,
``MccpConnection``, ``PageGone``, ``ServerLimits``, ``ServerStats``, ``load_page``).
The protocol is specified in docs/mccp.md.
"""

from .codec import decode_bridge_untrusted, decode_untrusted, encode
from .errors import ErrorCode, LocalProtocolError, ParseError, ProtocolError, RemoteProtocolError
from .messages import (
    Answer,
    BridgeMessage,
    Call,
    Dtmf,
    ErrorReply,
    Hangup,
    HangupRequest,
    PageMessage,
    Ping,
    Pong,
    Progress,
    Ringing,
    Trying,
)
from .session import Session, SessionState

__all__ = [
    "Answer",
    "BridgeMessage",
    "Call",
    "Dtmf",
    "ErrorCode",
    "ErrorReply",
    "Hangup",
    "HangupRequest",
    "LocalProtocolError",
    "PageMessage",
    "ParseError",
    "Ping",
    "Pong",
    "Progress",
    "ProtocolError",
    "RemoteProtocolError",
    "Ringing",
    "Session",
    "SessionState",
    "Trying",
    "decode_bridge_untrusted",
    "decode_untrusted",
    "encode",
]
