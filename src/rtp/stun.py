"""STUN messages for the ICE-lite agent: a typed, trust-aware wrapper over `aioice.stun`.

`aioice.stun` gives us a well-tested codec (RFC 5389/8489 attribute table, MESSAGE-INTEGRITY
HMAC-SHA1, FINGERPRINT CRC-32), but its parser raises whatever the bytes provoke (`ValueError`,
`struct.error`, `UnicodeDecodeError`...) and exposes attributes as a string-keyed dict of `Any`.
This module is the only place that touches it:

* `parse_stun_untrusted(data)` raises only `StunParseError` (a `ParseError`), and returns a frozen
  `StunMessage` with typed accessors for the attributes ICE uses.
* The encoders build exactly the messages an ICE agent sends: Binding success and error
  responses (RFC 8445 section 7.3), and Binding requests (used by our tests' browser stand-in).

Only short-term credentials are supported (RFC 8489 section 9.1): the HMAC key is the password.
"""

from __future__ import annotations

import binascii
import enum
import hmac
import ipaddress
import struct
from dataclasses import dataclass, field

from aioice import stun as _stun

from rtp.errors import ParseError

__all__ = [
    "MAGIC_COOKIE",
    "Address",
    "StunClass",
    "StunMessage",
    "StunParseError",
    "binding_error",
    "binding_request",
    "binding_success",
    "parse_stun_untrusted",
]

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
# A STUN message over UDP must fit one datagram; ICE checks are ~100 bytes (RFC 8489 section 6.1).
MAX_MESSAGE_LENGTH = 1500

Address = tuple[str, int]

# RFC 8489 section 18: the Binding success type, the attributes of our answer, FINGERPRINT's XOR.
_BINDING_SUCCESS = 0x0101
_XOR_MAPPED_ADDRESS = 0x0020
_MESSAGE_INTEGRITY = 0x0008
_FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E
_INTEGRITY_LENGTH = 24  # MESSAGE-INTEGRITY attribute: 4-byte header + HMAC-SHA1
_FINGERPRINT_LENGTH = 8  # FINGERPRINT attribute: 4-byte header + CRC-32


class StunParseError(ParseError):
    """The datagram is not a well-formed STUN message (or fails its FINGERPRINT)."""


class StunClass(enum.Enum):
    """The four STUN message classes (RFC 8489 section 5)."""

    REQUEST = _stun.Class.REQUEST
    INDICATION = _stun.Class.INDICATION
    SUCCESS = _stun.Class.RESPONSE
    ERROR = _stun.Class.ERROR


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A parsed STUN message with typed views of the attributes ICE uses."""

    is_binding: bool
    cls: StunClass
    transaction_id: bytes
    username: str | None
    priority: int | None
    use_candidate: bool
    ice_controlling: int | None
    ice_controlled: int | None
    has_integrity: bool
    has_fingerprint: bool
    error_code: int | None
    xor_mapped_address: Address | None
    _raw: _stun.Message = field(repr=False, compare=False)

    def check_integrity(self, key: bytes) -> bool:
        """True if MESSAGE-INTEGRITY is present and is the HMAC-SHA1 under `key` (RFC 8489 14.5)."""
        if not self.has_integrity:
            return False
        return bool(self._raw.check_message_integrity(key))


def _opt_int(attrs: dict[str, object], name: str) -> int | None:
    value = attrs.get(name)
    if value is None:
        return None
    if not isinstance(value, int):
        raise StunParseError(f"STUN attribute {name} is not an integer")
    return value


def parse_stun_untrusted(data: bytes) -> StunMessage:
    """Parse one STUN datagram; the only exception raised is `StunParseError`.

    Checks the header (RFC 8489 section 5: top two bits zero, magic cookie, length a multiple
    of 4 matching the datagram) and the FINGERPRINT if present; MESSAGE-INTEGRITY is checked
    separately with `StunMessage.check_integrity`, since the key depends on the USERNAME.
    """
    if len(data) < HEADER_LENGTH:
        raise StunParseError(f"STUN message of {len(data)} bytes is shorter than the 20-byte header")
    if len(data) > MAX_MESSAGE_LENGTH:
        raise StunParseError(f"STUN message of {len(data)} bytes is too long")
    if data[0] & 0xC0:
        raise StunParseError("STUN message type has its top two bits set")
    _msg_type, length, cookie = struct.unpack_from("!HHI", data)
    if cookie != MAGIC_COOKIE:
        raise StunParseError(f"STUN magic cookie is {cookie:#010x}, not {MAGIC_COOKIE:#010x}")
    if length % 4 or length != len(data) - HEADER_LENGTH:
        raise StunParseError(f"STUN length field {length} does not match the {len(data)}-byte datagram")
    try:
        raw = _stun.parse_message(bytes(data))
        attrs: dict[str, object] = raw.attributes
        username = attrs.get("USERNAME")
        if username is not None and not isinstance(username, str):
            raise StunParseError("STUN USERNAME is not text")
        error = attrs.get("ERROR-CODE")
        error_code = error[0] if isinstance(error, tuple) else None
        mapped = attrs.get("XOR-MAPPED-ADDRESS")
        xor_mapped = (str(mapped[0]), int(mapped[1])) if isinstance(mapped, tuple) else None
        return StunMessage(
            is_binding=raw.message_method == _stun.Method.BINDING,
            cls=StunClass(raw.message_class),
            transaction_id=raw.transaction_id,
            username=username,
            priority=_opt_int(attrs, "PRIORITY"),
            use_candidate="USE-CANDIDATE" in attrs,
            ice_controlling=_opt_int(attrs, "ICE-CONTROLLING"),
            ice_controlled=_opt_int(attrs, "ICE-CONTROLLED"),
            has_integrity="MESSAGE-INTEGRITY" in attrs,
            has_fingerprint="FINGERPRINT" in attrs,
            error_code=error_code,
            xor_mapped_address=xor_mapped,
            _raw=raw,
        )
    except StunParseError:
        raise
    except (ValueError, struct.error, IndexError, KeyError, TypeError) as exc:
        # UnicodeDecodeError is a ValueError; struct.error covers truncated attributes.
        raise StunParseError(f"malformed STUN message: {exc}") from exc


def _encode(msg: _stun.Message, key: bytes | None) -> bytes:
    if key is None:
        msg.add_fingerprint()
    else:
        msg.add_message_integrity(key)  # also adds FINGERPRINT, last (RFC 8489 14.7)
    return bytes(msg)


def binding_success(transaction_id: bytes, mapped: Address, key: bytes) -> bytes:
    """A Binding success response (RFC 8445 7.3.1.1): XOR-MAPPED-ADDRESS = the request's source,
    MESSAGE-INTEGRITY under our password, FINGERPRINT.

    Encoded here, byte for byte what `aioice.stun` writes (tests compare), without its generic
    attribute table: one answer per ICE check of every call.
    """
    ip = ipaddress.ip_address(mapped[0])  # raises ValueError on a bad address: our misuse, not the peer's
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    # RFC 8489 14.2: port XOR the cookie's top 16 bits, address XOR the cookie (IPv6: cookie + id).
    plain = struct.pack("!H", mapped[1]) + ip.packed
    pad = struct.pack("!I", MAGIC_COOKIE)[:2] + struct.pack("!I", MAGIC_COOKIE) + transaction_id
    xored = (int.from_bytes(plain) ^ int.from_bytes(pad[: len(plain)])).to_bytes(len(plain))
    family = 0x01 if ip.version == 4 else 0x02
    body = struct.pack("!HHBB", _XOR_MAPPED_ADDRESS, 2 + len(plain), 0, family) + xored
    # RFC 8489 14.5: the HMAC covers the message with its length counting MESSAGE-INTEGRITY;
    # 14.7: the CRC covers everything before FINGERPRINT, with the length counting FINGERPRINT.
    length = len(body) + _INTEGRITY_LENGTH
    head = struct.pack("!HHI", _BINDING_SUCCESS, length, MAGIC_COOKIE) + transaction_id
    integrity = hmac.digest(key, head + body, "sha1")
    head = struct.pack("!HHI", _BINDING_SUCCESS, length + _FINGERPRINT_LENGTH, MAGIC_COOKIE) + transaction_id
    signed = head + body + struct.pack("!HH", _MESSAGE_INTEGRITY, 20) + integrity
    crc = binascii.crc32(signed) ^ _FINGERPRINT_XOR
    return signed + struct.pack("!HHI", _FINGERPRINT, 4, crc)


def binding_error(transaction_id: bytes, code: int, reason: str, key: bytes | None = None) -> bytes:
    """A Binding error response with ERROR-CODE; signed with `key` when the request was
    authenticated (RFC 8489 section 9.1.3: 400/401 answers to unauthenticated requests are not)."""
    msg = _stun.Message(
        message_method=_stun.Method.BINDING,
        message_class=_stun.Class.ERROR,
        transaction_id=transaction_id,
    )
    msg.attributes["ERROR-CODE"] = (code, reason)
    return _encode(msg, key)


def binding_request(
    transaction_id: bytes,
    *,
    username: str,
    key: bytes,
    priority: int,
    ice_controlling: int | None = None,
    ice_controlled: int | None = None,
    use_candidate: bool = False,
) -> bytes:
    """An ICE connectivity check (RFC 8445 section 7.1): USERNAME, PRIORITY, the role attribute,
    optionally USE-CANDIDATE, then MESSAGE-INTEGRITY and FINGERPRINT."""
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    msg = _stun.Message(
        message_method=_stun.Method.BINDING,
        message_class=_stun.Class.REQUEST,
        transaction_id=transaction_id,
    )
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = priority
    if ice_controlling is not None:
        msg.attributes["ICE-CONTROLLING"] = ice_controlling
    if ice_controlled is not None:
        msg.attributes["ICE-CONTROLLED"] = ice_controlled
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    return _encode(msg, key)
