"""STUN messages for the ICE-lite agent: what ICE reads and writes, typed and trust-aware.

* `parse_stun_untrusted(data)` raises only `StunParseError` (a `ParseError`), and returns a frozen
  `StunMessage` with typed accessors for the attributes ICE uses. It is our own walk over the
  attributes (RFC 8489 section 14): every ICE check of every call goes through it (the browsers'
  consent checks too, one per call every few seconds), and `aioice.stun`'s generic parser cost
  about twice as much; tests compare the two on the checks aioice encodes (hypothesis).
* The encoders build exactly the messages an ICE agent sends: Binding success (encoded here) and
  error responses (RFC 8445 section 7.3), and Binding requests (used by our tests' browser
  stand-in); the last two through `aioice.stun`, a well-tested codec, as rare as they are.

Only short-term credentials are supported (RFC 8489 section 9.1): the HMAC key is the password.
"""

from __future__ import annotations

import binascii
import enum
import functools
import hmac
import ipaddress
import re
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
    "local_ufrag_untrusted",
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
    _data: bytes = field(repr=False, compare=False)
    _integrity_at: int = field(default=-1, repr=False, compare=False)  # offset of MESSAGE-INTEGRITY

    def check_integrity(self, key: bytes) -> bool:
        """True if MESSAGE-INTEGRITY is present and is the HMAC-SHA1 under `key` (RFC 8489 14.5)."""
        at = self._integrity_at
        if at < 0:
            return False
        data = self._data
        # RFC 8489 14.5: the HMAC covers the message up to MESSAGE-INTEGRITY, with the header's
        # length counting up to the end of MESSAGE-INTEGRITY (a FINGERPRINT after it excluded).
        signed = data[0:2] + struct.pack("!H", at + _INTEGRITY_LENGTH - HEADER_LENGTH) + data[4:at]
        return hmac.compare_digest(hmac.digest(key, signed, "sha1"), data[at + 4 : at + _INTEGRITY_LENGTH])


# RFC 8489 section 5: the class is bits C1 (0x0100) and C0 (0x0010) of the message type.
_CLASSES = {
    0x0000: StunClass.REQUEST,
    0x0010: StunClass.INDICATION,
    0x0100: StunClass.SUCCESS,
    0x0110: StunClass.ERROR,
}
_BINDING = 0x0001
_USERNAME = 0x0006
_ERROR_CODE = 0x0009
_PRIORITY = 0x0024
_USE_CANDIDATE = 0x0025
_ICE_CONTROLLED = 0x8029
_ICE_CONTROLLING = 0x802A
_ATTRIBUTE = struct.Struct("!HH")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_LENGTH_COOKIE = struct.Struct("!HI")
_ICE_CHARS = re.compile(rb"[A-Za-z0-9+/]{1,256}")  # RFC 8445 section 5.3 (ufrag: 4-256 ice-chars)
# The fixed sizes of the attributes ICE reads (RFC 8489 section 14, RFC 8445 section 16.1).
_SIZES = {_PRIORITY: 4, _USE_CANDIDATE: 0, _ICE_CONTROLLED: 8, _ICE_CONTROLLING: 8, _MESSAGE_INTEGRITY: 20}


def parse_stun_untrusted(data: bytes) -> StunMessage:
    """Parse one STUN datagram; the only exception raised is `StunParseError`.

    Checks the header (RFC 8489 section 5: top two bits zero, magic cookie, length a multiple
    of 4 matching the datagram), the attributes' framing and the sizes of those ICE reads, and
    the FINGERPRINT if present (it must be last, 14.7); MESSAGE-INTEGRITY is checked separately
    with `StunMessage.check_integrity`, since the key depends on the USERNAME. Attributes after
    MESSAGE-INTEGRITY other than FINGERPRINT are ignored (14.5); unknown ones are skipped.
    """
    n = len(data)
    if n < HEADER_LENGTH:
        raise StunParseError(f"STUN message of {n} bytes is shorter than the 20-byte header")
    if n > MAX_MESSAGE_LENGTH:
        raise StunParseError(f"STUN message of {n} bytes is too long")
    if data[0] & 0xC0:
        raise StunParseError("STUN message type has its top two bits set")
    msg_type, length, cookie = struct.unpack_from("!HHI", data)
    if cookie != MAGIC_COOKIE:
        raise StunParseError(f"STUN magic cookie is {cookie:#010x}, not {MAGIC_COOKIE:#010x}")
    if length % 4 or length != n - HEADER_LENGTH:
        raise StunParseError(f"STUN length field {length} does not match the {n}-byte datagram")
    data = bytes(data)
    username: str | None = None
    priority = controlling = controlled = error_code = None
    mapped: Address | None = None
    use_candidate = has_fingerprint = False
    integrity_at = -1
    offset = HEADER_LENGTH
    while offset < n:
        if offset + 4 > n:
            raise StunParseError("malformed STUN message: a truncated attribute header")
        kind, size = _ATTRIBUTE.unpack_from(data, offset)
        start = offset + 4
        end = start + size
        if end > n:
            raise StunParseError(f"malformed STUN message: attribute {kind:#06x} runs past the end")
        if kind == _FINGERPRINT:
            # RFC 8489 14.7: CRC-32 of the message before it, XOR 0x5354554e; it comes last.
            if size != 4 or end != n:
                raise StunParseError("malformed STUN message: FINGERPRINT is not the last 4-byte attribute")
            if binascii.crc32(data[:offset]) ^ _FINGERPRINT_XOR != _U32.unpack_from(data, start)[0]:
                raise StunParseError("STUN message fingerprint does not match")
            has_fingerprint = True
        elif integrity_at < 0:
            expected = _SIZES.get(kind)
            if expected is not None and size != expected:
                raise StunParseError(f"malformed STUN message: attribute {kind:#06x} of {size} bytes")
            if kind == _USERNAME:
                try:
                    username = data[start:end].decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise StunParseError(f"malformed STUN message: USERNAME {exc}") from None
            elif kind == _PRIORITY:
                priority = _U32.unpack_from(data, start)[0]
            elif kind == _USE_CANDIDATE:
                use_candidate = True
            elif kind == _ICE_CONTROLLING:
                controlling = _U64.unpack_from(data, start)[0]
            elif kind == _ICE_CONTROLLED:
                controlled = _U64.unpack_from(data, start)[0]
            elif kind == _MESSAGE_INTEGRITY:
                integrity_at = offset
            elif kind == _ERROR_CODE:
                if size < 4:
                    raise StunParseError("malformed STUN message: ERROR-CODE shorter than 4 bytes")
                error_code = (data[start + 2] & 0x07) * 100 + data[start + 3]  # RFC 8489 14.8
            elif kind == _XOR_MAPPED_ADDRESS:
                mapped = _xor_address(data, start, size)
        offset = end + (-size % 4)  # attributes are padded to 4 bytes (section 14)
    return StunMessage(
        is_binding=(msg_type & 0x3EEF) == _BINDING,
        cls=_CLASSES[msg_type & 0x0110],
        transaction_id=data[8:20],
        username=username,
        priority=priority,
        use_candidate=use_candidate,
        ice_controlling=controlling,
        ice_controlled=controlled,
        has_integrity=integrity_at >= 0,
        has_fingerprint=has_fingerprint,
        error_code=error_code,
        xor_mapped_address=mapped,
        _data=data,
        _integrity_at=integrity_at,
    )


def local_ufrag_untrusted(data: bytes | bytearray | memoryview) -> str | None:
    """The receiver's ufrag named by a STUN datagram's USERNAME, or None; never raises.

    RFC 8445 7.2.2: a check's USERNAME is the receiver's ufrag, a colon, the sender's ufrag
    ("LFRAG:RFRAG" with LFRAG the receiver's, as 7.3 checks it), so a port shared by several
    ICE sessions (rtp.browser_port) finds the session from its first part. Only the header
    (RFC 8489 section 5: top bits, magic cookie, length) and the attributes' framing up to
    USERNAME are checked: the session's own agent parses and authenticates the whole message
    (`parse_stun_untrusted`). None when
    there is no USERNAME, no colon in it, or its first part is empty or not ice-chars (RFC 8445
    section 5.3: ALPHA / DIGIT / "+" / "/").
    """
    n = len(data)
    if n < HEADER_LENGTH or n > MAX_MESSAGE_LENGTH or data[0] & 0xC0:
        return None
    length, cookie = _LENGTH_COOKIE.unpack_from(data, 2)
    if cookie != MAGIC_COOKIE or length % 4 or length != n - HEADER_LENGTH:
        return None
    offset = HEADER_LENGTH
    while offset + 4 <= n:
        kind, size = _ATTRIBUTE.unpack_from(data, offset)
        start = offset + 4
        end = start + size
        if end > n:
            return None
        if kind == _USERNAME:
            colon = bytes(data[start:end]).find(b":")
            if colon <= 0:
                return None
            ufrag = bytes(data[start : start + colon])
            return ufrag.decode("ascii") if _ICE_CHARS.fullmatch(ufrag) else None
        if kind in (_MESSAGE_INTEGRITY, _FINGERPRINT):
            return None  # USERNAME comes before both (RFC 8489 14.5, 14.7)
        offset = end + (-size % 4)
    return None


def _xor_address(data: bytes, start: int, size: int) -> Address:
    """XOR-MAPPED-ADDRESS (RFC 8489 14.2): family, port and address XOR the cookie (and id)."""
    family = data[start + 1]
    if (family, size) not in ((0x01, 8), (0x02, 20)):
        raise StunParseError("malformed STUN message: XOR-MAPPED-ADDRESS of a bad family or size")
    port = struct.unpack_from("!H", data, start + 2)[0] ^ (MAGIC_COOKIE >> 16)
    pad = data[4:20] if family == 0x02 else data[4:8]
    raw = bytes(a ^ b for a, b in zip(data[start + 4 : start + size], pad, strict=True))
    return (str(ipaddress.ip_address(raw)), port)


def _encode(msg: _stun.Message, key: bytes | None) -> bytes:
    if key is None:
        msg.add_fingerprint()
    else:
        msg.add_message_integrity(key)  # also adds FINGERPRINT, last (RFC 8489 14.7)
    return bytes(msg)


_COOKIE_PAD = struct.pack("!I", MAGIC_COOKIE)[:2] + struct.pack("!I", MAGIC_COOKIE)


@functools.lru_cache(maxsize=4096)
def _plain_address(mapped: Address) -> tuple[bytes, int]:
    """Port and address packed, and the family: the same few per call, every consent check
    (parsing the address text took a third of an answer's encoding)."""
    ip = ipaddress.ip_address(mapped[0])  # raises ValueError on a bad address: our misuse, not the peer's
    return struct.pack("!H", mapped[1]) + ip.packed, 0x01 if ip.version == 4 else 0x02


def binding_success(transaction_id: bytes, mapped: Address, key: bytes) -> bytes:
    """A Binding success response (RFC 8445 7.3.1.1): XOR-MAPPED-ADDRESS = the request's source,
    MESSAGE-INTEGRITY under our password, FINGERPRINT.

    Encoded here, byte for byte what `aioice.stun` writes (tests compare), without its generic
    attribute table: one answer per ICE check of every call.
    """
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    # RFC 8489 14.2: port XOR the cookie's top 16 bits, address XOR the cookie (IPv6: cookie + id).
    plain, family = _plain_address(mapped)
    pad = _COOKIE_PAD + transaction_id
    xored = (int.from_bytes(plain) ^ int.from_bytes(pad[: len(plain)])).to_bytes(len(plain))
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
