"""SRTP/SRTCP (RFC 3711, RFC 7714) for DTLS-SRTP (RFC 5764), behind our own API over pylibsrtp.

pylibsrtp facts this wrapper is built around (see shared/recipes/perf/README.md):

* its `Session.protect`/`unprotect` accept only `bytes`, and each call allocates an `int *`, checks
  types and copies twice: per packet, that costs as much as the cipher. So `SrtpTx`/`SrtpRx` call
  libsrtp through pylibsrtp's cffi binding themselves (`_Direct`): any bytes-like packet is copied
  once into the session's work buffer, protected or unprotected there with a length cell made once,
  and copied out as `bytes`. libsrtp's status codes map to `SrtpError` kinds directly;
* one `Session` per direction: `SSRC_ANY_OUTBOUND` to protect, `SSRC_ANY_INBOUND` to unprotect;
* replay protection applies on both sides, and every failure is a bare `pylibsrtp.Error` whose
  message tells authentication from replay. We turn each into `SrtpError(kind)`, so callers can
  count per cause; a packet is refused, never the session. `allow_repeat_tx` stays off: the relay
  never sends the same index twice (it rewrites sequence numbers to be continuous).

In place (`PacketBuffer`): the relay's hot path goes further. A call's sockets receive into one
`PacketBuffer` (a bytearray with a cffi pointer to it, made once), and `SrtpTx.protect_in` /
`SrtpRx.unprotect_in` run libsrtp on that buffer where the datagram already is: no copy in, no
copy out, no `bytes` object per packet; the result is sent from the same buffer.

Memory: each `pylibsrtp.Session` allocates its own 1500-byte work buffer, which `protect` and
`unprotect` fill, run libsrtp on, and copy out of before returning (nothing refers to it between
calls). `srtp_pair` makes one call's two directions share a single buffer (about 1.5 KiB less
per call): they belong to one relay, which uses them one packet at a time.

Key export (RFC 5764 §4.2): after the DTLS handshake both ends export
`2 * (key_length + salt_length)` bytes with the label "EXTRACTOR-dtls_srtp" and no context, laid
out as client_write_key | server_write_key | client_write_salt | server_write_salt. Each side
protects with its own write key and unprotects with the peer's.
"""

from __future__ import annotations

import enum
from typing import Any

import pylibsrtp
from pylibsrtp._binding import ffi, lib

from rtp.errors import SrtpError, SrtpErrorKind

__all__ = [
    "EXPORTER_LABEL",
    "MAX_PROTECT_INPUT",
    "PacketBuffer",
    "SrtpProfile",
    "SrtpRx",
    "SrtpTx",
    "keys_from_dtls",
    "srtp_pair",
]

EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
# pylibsrtp copies into a 1500-byte buffer and reserves the largest trailer (144 bytes).
MAX_PROTECT_INPUT = 1356


class SrtpProfile(enum.Enum):
    """The DTLS-SRTP protection profiles we negotiate (RFC 5764 §4.1.2, RFC 7714 §14.2).

    The value is the OpenSSL/pyOpenSSL profile name used in `set_tlsext_use_srtp` and returned by
    `get_selected_srtp_profile`.
    """

    AES128_CM_HMAC_SHA1_80 = "SRTP_AES128_CM_SHA1_80"
    AEAD_AES_128_GCM = "SRTP_AEAD_AES_128_GCM"

    @property
    def dtls_name(self) -> str:
        """The profile name in DTLS (OpenSSL) terms."""
        return self.value

    @property
    def key_length(self) -> int:
        """Master key length in bytes."""
        return 16

    @property
    def salt_length(self) -> int:
        """Master salt length in bytes: 112 bits for AES-CM (RFC 3711), 96 for GCM (RFC 7714 §12)."""
        return 14 if self is SrtpProfile.AES128_CM_HMAC_SHA1_80 else 12

    @property
    def keying_material_length(self) -> int:
        """How many bytes to export with `EXPORTER_LABEL` (RFC 5764 §4.2)."""
        return 2 * (self.key_length + self.salt_length)

    @property
    def rtp_overhead(self) -> int:
        """Bytes SRTP adds to an RTP packet: an 80-bit tag, or the 16-byte GCM tag."""
        return 10 if self is SrtpProfile.AES128_CM_HMAC_SHA1_80 else 16

    @property
    def _libsrtp_profile(self) -> int:
        if self is SrtpProfile.AES128_CM_HMAC_SHA1_80:
            return int(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        return int(pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM)

    @classmethod
    def from_dtls_name(cls, name: str | bytes) -> SrtpProfile:
        """The profile for a DTLS profile name (as pyOpenSSL returns it, bytes or str).

        Raises `ValueError` for a profile we did not offer.
        """
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        for profile in cls:
            if profile.value == text:
                return profile
        raise ValueError(f"unsupported DTLS-SRTP profile {text!r}")

    @classmethod
    def dtls_offer(cls) -> bytes:
        """The colon-separated list for `Context.set_tlsext_use_srtp`, preferred first (GCM)."""
        return b":".join(p.value.encode() for p in (cls.AEAD_AES_128_GCM, cls.AES128_CM_HMAC_SHA1_80))


def keys_from_dtls(
    profile: SrtpProfile, keying_material: bytes, we_are_dtls_client: bool
) -> tuple[bytes, bytes]:
    """Split exported keying material into `(tx_key_salt, rx_key_salt)` (RFC 5764 §4.2).

    Each result is master key || master salt, the form `SrtpTx`/`SrtpRx` take. The DTLS client
    writes with the client key and salt; the server with the server's.
    """
    k, s = profile.key_length, profile.salt_length
    if len(keying_material) != profile.keying_material_length:
        raise ValueError(
            f"{profile.name} needs {profile.keying_material_length} bytes of keying material, "
            f"got {len(keying_material)}"
        )
    client = keying_material[0:k] + keying_material[2 * k : 2 * k + s]
    server = keying_material[k : 2 * k] + keying_material[2 * k + s : 2 * k + 2 * s]
    return (client, server) if we_are_dtls_client else (server, client)


def _session(profile: SrtpProfile, key_salt: bytes, ssrc_type: int) -> pylibsrtp.Session:
    need = profile.key_length + profile.salt_length
    if len(key_salt) != need:
        raise ValueError(f"{profile.name} needs a {need}-byte master key+salt, got {len(key_salt)}")
    policy = pylibsrtp.Policy(key=bytes(key_salt), ssrc_type=ssrc_type, srtp_profile=profile._libsrtp_profile)
    return pylibsrtp.Session(policy=policy)


def _share_buffer(session: pylibsrtp.Session, owner: pylibsrtp.Session) -> None:
    """Give `session` the work buffer of `owner` in place of its own (see the module docstring).
    pylibsrtp 1.0 keeps it in `_cdata` and a view of it in `_buffer`; a version without them
    keeps its own buffer."""
    if all(hasattr(s, name) for s in (session, owner) for name in ("_cdata", "_buffer")):
        session._cdata, session._buffer = owner._cdata, owner._buffer


# libsrtp 2 srtp_err_status_t values (srtp.h) that name a cause we count apart.
_AUTH_FAIL = 7
_REPLAY = frozenset({9, 10})  # srtp_err_status_replay_fail, srtp_err_status_replay_old
# The largest trailers libsrtp may add (pylibsrtp's SRTP_MAX_TRAILER_LEN and its SRTCP one).
_RTP_TRAILER = 16 + 128
_RTCP_TRAILER = _RTP_TRAILER + 4


def _status_error(status: int, what: str) -> SrtpError:
    if status == _AUTH_FAIL:
        return SrtpError(SrtpErrorKind.AUTH, f"{what}: authentication failure")
    if status in _REPLAY:
        return SrtpError(SrtpErrorKind.REPLAY, f"{what}: replay check failed")
    return SrtpError(SrtpErrorKind.MALFORMED, f"{what}: libsrtp status {status}")


class _Direct:
    """libsrtp calls on a session's own context and work buffer, with one reusable length cell."""

    __slots__ = ("_buffer", "_cdata", "_ctx", "_length", "_session")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session  # keeps the context (freed with it) and the buffer alive
        self._ctx = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._length = ffi.new("int *")

    def run(self, func: Any, packet: bytes | bytearray | memoryview, trailer: int, what: str) -> bytes:
        n = len(packet)
        if n > len(self._buffer) - trailer:
            raise SrtpError(SrtpErrorKind.MALFORMED, f"{what}: packet is too long ({n} bytes)")
        self._buffer[0:n] = packet
        length = self._length
        length[0] = n
        status = func(self._ctx, self._cdata, length)
        if status:
            raise _status_error(status, what)
        return bytes(self._buffer[0 : length[0]])  # a cffi buffer slice is already bytes: no copy


class PacketBuffer:
    """A datagram buffer SRTP works on in place: `data` (receive into it), `view` (send slices of it).

    One per call (its sockets are served one datagram at a time). libsrtp may add a trailer of up
    to 148 bytes when protecting, so `protect_in` takes at most `size - 148` bytes.
    """

    __slots__ = ("_length", "_ptr", "data", "protect_limit", "view")

    def __init__(self, size: int = 2048) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self.protect_limit = size - _RTP_TRAILER  # the longest packet `protect_in` takes
        self._ptr = ffi.from_buffer(self.data)
        self._length = ffi.new("int *")

    def __len__(self) -> int:
        return len(self.data)


_srtp_protect = lib.srtp_protect
_srtp_unprotect = lib.srtp_unprotect


def _address(pointer: Any) -> int:
    return int(ffi.cast("uintptr_t", pointer))


# libsrtp's entry points as addresses, for the C relay (rtp._steady) to call the same library.
_PROTECT_ADDRESS = _address(ffi.addressof(lib, "srtp_protect"))
_UNPROTECT_ADDRESS = _address(ffi.addressof(lib, "srtp_unprotect"))


def _too_long(what: str, n: int) -> SrtpError:
    return SrtpError(SrtpErrorKind.MALFORMED, f"{what}: packet is too long ({n} bytes)")


class SrtpTx:
    """The sending context of one direction: protects RTP and RTCP with our write key."""

    __slots__ = ("_ctx", "_direct", "_session", "native", "profile")

    def __init__(self, profile: SrtpProfile, key_salt: bytes) -> None:
        self.profile = profile
        self._session = _session(profile, key_salt, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._direct = _Direct(self._session)
        self._ctx = self._direct._ctx
        # (srtp_protect's address, this context's) for rtp._steady; valid while `self` lives.
        self.native = (_PROTECT_ADDRESS, _address(self._ctx))

    def protect(self, rtp: bytes | bytearray | memoryview) -> bytes:
        """Encrypt and authenticate one RTP packet (RFC 3711 §3.3).

        Raises `SrtpError` (MALFORMED for a packet too short or longer than `MAX_PROTECT_INPUT`,
        REPLAY when the same sequence number is protected twice).
        """
        return self._direct.run(lib.srtp_protect, rtp, _RTP_TRAILER, "protect")

    def protect_in(self, buf: PacketBuffer, n: int) -> int:
        """`protect` on the first `n` bytes of `buf`, in place; returns the SRTP packet's length."""
        if n > buf.protect_limit:
            raise _too_long("protect", n)
        length = buf._length
        length[0] = n
        status = _srtp_protect(self._ctx, buf._ptr, length)
        if status:
            raise _status_error(status, "protect")
        return length[0]  # type: ignore[no-any-return]

    def protect_rtcp(self, rtcp: bytes | bytearray | memoryview) -> bytes:
        """Encrypt and authenticate one compound RTCP packet (RFC 3711 §3.4), adding the index."""
        return self._direct.run(lib.srtp_protect_rtcp, rtcp, _RTCP_TRAILER, "protect_rtcp")


class SrtpRx:
    """The receiving context of one direction: authenticates and decrypts with the peer's key."""

    __slots__ = ("_ctx", "_direct", "_session", "native", "profile")

    def __init__(self, profile: SrtpProfile, key_salt: bytes) -> None:
        self.profile = profile
        self._session = _session(profile, key_salt, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self._direct = _Direct(self._session)
        self._ctx = self._direct._ctx
        # (srtp_unprotect's address, this context's) for rtp._steady; valid while `self` lives.
        self.native = (_UNPROTECT_ADDRESS, _address(self._ctx))

    def unprotect(self, srtp: bytes | bytearray | memoryview) -> bytes:
        """Authenticate and decrypt one SRTP packet; raises `SrtpError` (AUTH, REPLAY, MALFORMED)."""
        return self._direct.run(lib.srtp_unprotect, srtp, 0, "unprotect")

    def unprotect_in(self, buf: PacketBuffer, n: int) -> int:
        """`unprotect` on the first `n` bytes of `buf`, in place; returns the RTP packet's length."""
        length = buf._length  # n <= len(buf): it was received into it
        length[0] = n
        status = _srtp_unprotect(self._ctx, buf._ptr, length)
        if status:
            raise _status_error(status, "unprotect")
        return length[0]  # type: ignore[no-any-return]

    def unprotect_rtcp(self, srtcp: bytes | bytearray | memoryview) -> bytes:
        """Authenticate and decrypt one SRTCP packet; raises `SrtpError` (AUTH, REPLAY, MALFORMED)."""
        return self._direct.run(lib.srtp_unprotect_rtcp, srtcp, 0, "unprotect_rtcp")


def srtp_pair(profile: SrtpProfile, tx_key_salt: bytes, rx_key_salt: bytes) -> tuple[SrtpTx, SrtpRx]:
    """The two directions of one call (`keys_from_dtls` gives the keys), sharing one work buffer:
    use them from one thread, one packet at a time (a relay does)."""
    tx, rx = SrtpTx(profile, tx_key_salt), SrtpRx(profile, rx_key_salt)
    _share_buffer(rx._session, tx._session)
    rx._direct = _Direct(rx._session)
    return tx, rx
