"""MCCP text codec: JSON text frames <-> message objects (pure).

:func:`decode_untrusted` turns a frame from the page into a :class:`~mccp.messages.PageMessage`
and raises only :class:`~mccp.errors.ParseError`, whose ``code`` and ``reason`` go straight into
the ``error`` reply. :func:`encode` is the inverse for any message. Unknown fields are ignored
(forward compatibility, docs/mccp.md "Versioning"); a ``v`` other than 1 is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .errors import ErrorCode, ParseError
from .limits import MAX_MESSAGE_CHARS, PROTOCOL_VERSION
from .messages import (
    BRIDGE_TYPES,
    PAGE_TYPES,
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


def _json_kind(value: object) -> str:
    match value:
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case None:
            return "null"
        case list():
            return "array"
        case _:
            return "object"


def _quote(text: str, limit: int = 40) -> str:
    """A short printable rendering of untrusted text for a ``reason``."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return ascii(shown)


def _loads_object(text: str, max_chars: int) -> Mapping[str, object]:
    if len(text) > max_chars:
        raise ParseError(ErrorCode.TOO_BIG, f"message is {len(text)} characters, over {max_chars}")
    try:
        value: object = json.loads(text)
    except RecursionError:
        raise ParseError(ErrorCode.BAD_MESSAGE, "invalid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and int() digit limits
        raise ParseError(ErrorCode.BAD_MESSAGE, f"invalid JSON: {str(exc)[:80]}") from None
    if not isinstance(value, dict):
        raise ParseError(ErrorCode.BAD_MESSAGE, f"message must be a JSON object, got {_json_kind(value)}")
    return value


def _check_version(obj: Mapping[str, object]) -> None:
    if "v" not in obj:
        return
    v = obj["v"]
    if not isinstance(v, int) or isinstance(v, bool):
        raise ParseError(ErrorCode.BAD_MESSAGE, f"field 'v' must be an integer, got {_json_kind(v)}")
    if v != PROTOCOL_VERSION:
        raise ParseError(
            ErrorCode.UNSUPPORTED_VERSION, f"protocol version {v} not supported (this bridge speaks 1)"
        )


def _type_of(obj: Mapping[str, object]) -> str:
    if "type" not in obj:
        raise ParseError(ErrorCode.BAD_MESSAGE, "missing field 'type'")
    kind = obj["type"]
    if not isinstance(kind, str):
        raise ParseError(ErrorCode.BAD_MESSAGE, f"field 'type' must be a string, got {_json_kind(kind)}")
    return kind


def _str(obj: Mapping[str, object], kind: str, name: str) -> str:
    if name not in obj:
        raise ParseError(ErrorCode.BAD_MESSAGE, f"'{kind}' is missing field '{name}'")
    value = obj[name]
    if not isinstance(value, str):
        raise ParseError(
            ErrorCode.BAD_MESSAGE, f"field '{name}' of '{kind}' must be a string, got {_json_kind(value)}"
        )
    return value


def _int(obj: Mapping[str, object], kind: str, name: str) -> int:
    if name not in obj:
        raise ParseError(ErrorCode.BAD_MESSAGE, f"'{kind}' is missing field '{name}'")
    value = obj[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ParseError(
            ErrorCode.BAD_MESSAGE, f"field '{name}' of '{kind}' must be an integer, got {_json_kind(value)}"
        )
    return value


def decode_untrusted(text: str, *, max_chars: int = MAX_MESSAGE_CHARS) -> PageMessage:
    """Decode one text frame from the page; raises only :class:`ParseError`.

    The error's ``code`` is 413 for a frame or field over its cap, 505 for an unsupported
    ``v``, and 400 for anything else (its ``reason`` names the field and what was wrong).
    """
    obj = _loads_object(text, max_chars)
    kind = _type_of(obj)
    _check_version(obj)
    if kind not in PAGE_TYPES:
        raise ParseError(ErrorCode.BAD_MESSAGE, f"unknown message type {_quote(kind)}")
    match kind:
        case "call":
            return Call(
                clr=_str(obj, kind, "clr"),
                pwd=_str(obj, kind, "pwd"),
                cld=_str(obj, kind, "cld"),
                sdp=_str(obj, kind, "sdp"),
            )
        case "dtmf":
            return Dtmf(digits=_str(obj, kind, "digits"))
        case "hangup":
            return HangupRequest()
        case _:
            return Ping()


def decode_bridge_untrusted(text: str, *, max_chars: int = MAX_MESSAGE_CHARS) -> BridgeMessage:
    """Decode one text frame sent by a bridge (for clients and tests); raises only ParseError."""
    obj = _loads_object(text, max_chars)
    kind = _type_of(obj)
    _check_version(obj)
    if kind not in BRIDGE_TYPES:
        raise ParseError(ErrorCode.BAD_MESSAGE, f"unknown message type {_quote(kind)}")
    match kind:
        case "trying":
            return Trying()
        case "ringing":
            return Ringing()
        case "progress":
            return Progress(sdp=_str(obj, kind, "sdp"))
        case "answer":
            return Answer(sdp=_str(obj, kind, "sdp"))
        case "hangup":
            return Hangup(code=_int(obj, kind, "code"), reason=_str(obj, kind, "reason"))
        case "error":
            return ErrorReply(code=_int(obj, kind, "code"), reason=_str(obj, kind, "reason"))
        case _:
            return Pong()


def encode(msg: PageMessage | BridgeMessage) -> str:
    """Encode any MCCP message as one compact JSON text (``type`` first)."""
    out: dict[str, str | int] = {"type": msg.TYPE}
    match msg:
        case Call(clr=clr, pwd=pwd, cld=cld, sdp=sdp):
            out |= {"clr": clr, "pwd": pwd, "cld": cld, "sdp": sdp}
        case Dtmf(digits=digits):
            out["digits"] = digits
        case Progress(sdp=sdp) | Answer(sdp=sdp):
            out["sdp"] = sdp
        case Hangup(code=code, reason=reason) | ErrorReply(code=code, reason=reason):
            out |= {"code": code, "reason": reason}
        case HangupRequest() | Ping() | Trying() | Ringing() | Pong():
            pass
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)
