"""DTLS-SRTP key agreement with the browser (RFC 5763, RFC 5764, RFC 6347), sans-IO.

Theory of operation
-------------------
`DtlsEndpoint` drives a pyOpenSSL `Connection` through memory BIOs: datagrams from the network
go in with `feed_untrusted(datagram, now)`, datagrams to send come out of `outgoing()`, and time
goes in with `handle_timeout(now)` when `next_deadline()` has passed. It owns no socket and no
clock.

    HANDSHAKING --(handshake done, fingerprint ok, SRTP profile agreed)--> CONNECTED
         |                                                                   |
         +--(fatal alert, fingerprint mismatch, no SRTP profile)--> FAILED   +--(close_notify
         |                                                                   |   either way)
         +--(close())-------------------------------------------> CLOSED <---+

Datagrams and records. A memory BIO is a byte stream, so the datagram boundaries of what
OpenSSL writes are lost; we read everything it produced, split it into DTLS records by their
13-byte headers (RFC 6347 section 4.1) and pack whole records into datagrams of at most `MTU`
bytes. `set_ciphertext_mtu(MTU)` keeps each record (handshake messages are fragmented by
OpenSSL) under that size, so certificates never need IP fragmentation (RFC 6347 4.1.1).

Retransmission (RFC 6347 section 4.2.4). OpenSSL's own DTLS timer reads the wall clock
(`DTLSv1_get_timeout`/`DTLSv1_handle_timeout` compare against gettimeofday), while this object
lives on the `now` the caller passes (Trio's clock in production, a fake one in tests). We
reconcile the two like this: each new flight OpenSSL emits while handshaking is remembered and
`next_deadline()` is `sent_at + DTLSv1_get_timeout() + 5 ms`, i.e. just after OpenSSL's own
timer (1 s, doubling up to 60 s). At that deadline `handle_timeout(now)` calls
`DTLSv1_handle_timeout`, so OpenSSL re-encodes the flight with fresh record sequence numbers,
which matters: a byte-identical copy is dropped by the peer's replay window (RFC 6347 4.1.2.6)
for every record it has already seen, including a ChangeCipherSpec it saw too early (overtaking
the fragment before it) and had to discard, and the handshake would never finish. When
OpenSSL's wall clock says the timer has not expired (a fake clock in tests, a clock step), we
fall back to re-sending the remembered bytes and doubling our own timer. The final
flight (the one that completes the peer's handshake) has no timer (RFC 6347 4.2.4): it is
re-sent, at most MAX_FINAL_RESENDS times, whenever handshake records still arrive once we are
connected, which means the peer never got it and is retransmitting its own last flight.
Giving up is the caller's job (a `fail_after` around the ICE+DTLS phase): pure layers report
deadlines, never enforce them.

Trust. `feed_untrusted` never raises on network input: datagrams that are not a sequence of
well-formed DTLS records are dropped and counted before OpenSSL sees them; records OpenSSL
cannot authenticate are discarded by OpenSSL itself (RFC 6347 4.1.2.7). The peer certificate is
accepted only if its digest equals the SDP `a=fingerprint` (RFC 5763 section 5; RFC 8122), which
is checked in the verify callback so that a mismatch aborts the handshake with an alert.

Release after the handshake (RFC 6347 4.2.4). Once SRTP is keyed, the `SSL.Connection` (about
75 KiB of OpenSSL state per call: the SSL object, its handshake state, the peer's certificate,
the session, the record layer's cipher contexts) has little left to do: WebRTC audio
carries no DTLS application data, renegotiation is off. What remains is small and kept as
bytes: (1) RFC 6347 4.2.4 says that the endpoint that sent the last flight MUST answer a
retransmission of the peer's last flight with its own last flight for at least twice the TCP
MSL: our final flight (CCS, Finished, at most one datagram at our MTU) is stored as sent and
re-sent as is (MAX_FINAL_RESENDS times) when handshake records arrive, the peer has never seen
those records since it is asking again; (2) the exported SRTP keying material; (3) our
close_notify: it is encoded by OpenSSL at release time (`SSL_shutdown` into the memory BIO) and
kept until `close()` sends it, which is valid because we send no other record after the
handshake, so its epoch-1 sequence number is still the next one. So `release_after` seconds
after the handshake (RELEASE_AFTER, 2 s: two of the peer's initial retransmission timeouts, in
which a peer that lost our final flight is answered by OpenSSL itself) the OpenSSL objects are
freed on the next `handle_timeout` or `feed_untrusted` (`release_at` says when). What we give up
is authenticating the peer's records: a close_notify or other alert after the release cannot be
told from a forgery (RFC 6347 4.1.2.7: invalid records are silently discarded), so every
datagram from the peer after the release is dropped and counted (`counters.after_release`); the
call still ends by its signalling, ICE consent (RFC 7675) or the media timeout.

Shared context. The `SSL.Context` (certificate, key, DTLS 1.2 only, SRTP profiles, the verify
callback) is the same for every call, so it is built once per `DtlsCertificate` and kept on it
(`DtlsCertificate.context()`); the per-call part of the check, the expected fingerprint and its
outcome, is a `_PeerCheck` attached to each `SSL.Connection` with `set_app_data`, which the
shared verify callback reads. The role is set per connection (`set_connect_state` /
`set_accept_state`), so one context serves both roles.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from rtp.errors import LocalProtocolError
from rtp.srtp import EXPORTER_LABEL, SrtpProfile

__all__ = [
    "MTU",
    "RELEASE_AFTER",
    "DtlsCertificate",
    "DtlsCounters",
    "DtlsEndpoint",
    "DtlsRole",
    "DtlsState",
    "OpenSslRunner",
    "certificate_fingerprint",
    "format_fingerprint",
    "split_records_untrusted",
    "warm_up",
]

# Bytes of DTLS per datagram: well under the 1280-byte IPv6 minimum MTU minus IP/UDP headers.
MTU = 1200
INITIAL_RTO = 1.0  # RFC 6347 4.2.4.1: initial timer 1 s
MAX_RTO = 60.0  # RFC 6347 4.2.4.1: at least 60 s maximum
TIMER_SLACK = 0.005  # fire just after OpenSSL's wall-clock timer, never just before
RECORD_HEADER = 13
DTLS1_2_VERSION = 0xFEFD
MAX_FINAL_RESENDS = 10
RELEASE_AFTER = 2 * INITIAL_RTO  # seconds from the handshake to the release of OpenSSL's objects
# RFC 6347 4.1: content types change_cipher_spec(20), alert(21), handshake(22), application_data(23)
RECORD_TYPES = range(20, 24)

_T = TypeVar("_T")


class OpenSslRunner(Protocol):
    """Where an endpoint's OpenSSL work runs: `run(work)` calls `work()` and returns its result
    (or raises what it raised), in whatever thread it chooses, before returning. It must run
    `work` inline when called from within such work (see `DtlsCertificate.run_openssl`)."""

    def __call__(self, work: Callable[[], _T], /) -> _T: ...


def run_inline(work: Callable[[], _T], /) -> _T:
    """The default `OpenSslRunner`: in the caller's thread."""
    return work()


_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "sha-1": hashes.SHA1,
    "sha-224": hashes.SHA224,
    "sha-256": hashes.SHA256,
    "sha-384": hashes.SHA384,
    "sha-512": hashes.SHA512,
}
# The same functions by their hashlib names: the per-handshake check hashes the peer's DER with
# hashlib (one C call) and compares raw digests.
_HASHLIB_NAMES = {name: name.replace("-", "") for name in _HASHES}


class DtlsRole(enum.Enum):
    """Who sends the ClientHello: a=setup:active is the client, a=setup:passive the server."""

    CLIENT = "client"
    SERVER = "server"


class DtlsState(enum.Enum):
    """The endpoint's state; FAILED and CLOSED are final."""

    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


def format_fingerprint(digest: bytes) -> str:
    """Upper-case hex pairs joined by colons, the SDP a=fingerprint form (RFC 8122 section 5)."""
    return digest.hex(":").upper()


def _normalize_fingerprint(alg: str, value: str) -> tuple[str, str]:
    alg = alg.strip().lower()
    if alg not in _HASHES:
        raise ValueError(f"unsupported fingerprint hash {alg!r}")
    return alg, value.strip().upper()


def certificate_fingerprint(cert: x509.Certificate, alg: str = "sha-256") -> str:
    """The `a=fingerprint` value of `cert` under hash `alg` (RFC 8122 hash names)."""
    alg, _ = _normalize_fingerprint(alg, "")
    return format_fingerprint(cert.fingerprint(_HASHES[alg]()))


@dataclass(frozen=True, slots=True)
class DtlsCertificate:
    """Our DTLS identity: an ECDSA P-256 key and a self-signed certificate (RFC 8827 6.5).

    Generate it once per process and share it between calls; its `fingerprint_sha256` goes
    into every SDP answer as `a=fingerprint:sha-256 ...`. `run_openssl` is where the endpoints
    of this identity do their OpenSSL work (the SSL object's creation, the handshake, the
    release): inline by default; the bridge gives a thread of its own, so that the ~75 KiB a
    handshake holds until its release lands in that thread's malloc arena, not between the
    calls' long-lived allocations in the main heap (memory per call, issue 6; bridge.openssl_thread).
    """

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    fingerprint_sha256: str
    run_openssl: OpenSslRunner = field(default=run_inline, compare=False, repr=False)
    # The SSL.Context every DtlsEndpoint with this identity shares, built on first use.
    _context: list[SSL.Context] = field(default_factory=list, init=False, compare=False, repr=False)

    def context(self) -> SSL.Context:
        """The DTLS-SRTP `SSL.Context` for this identity, built once and shared by every call."""
        if not self._context:
            self._context.append(_make_context(self))
        return self._context[0]

    @classmethod
    def generate(
        cls, common_name: str = "mccp-bridge", *, run_openssl: OpenSslRunner = run_inline
    ) -> DtlsCertificate:
        """A fresh P-256 key and self-signed certificate (`run_openssl`: see the class).

        The validity period is fixed (2020-2120): WebRTC peers authenticate the certificate by
        its fingerprint only and ignore its dates, so no clock is needed here.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(2120, 1, 1, tzinfo=datetime.UTC))
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key, certificate_fingerprint(cert), run_openssl)


@dataclass(slots=True)
class DtlsCounters:
    """Datagrams handled by one endpoint."""

    datagrams_in: int = 0
    malformed: int = 0
    after_end: int = 0
    datagrams_out: int = 0
    retransmits: int = 0
    after_release: int = 0  # from the peer once OpenSSL was released: unauthenticated, dropped


def split_records_untrusted(data: bytes) -> list[bytes] | None:
    """Split a datagram (or a BIO read) into DTLS records; None if it is not a clean sequence of
    records with DTLS versions (major byte 0xFE) and consistent lengths (RFC 6347 4.1)."""
    records: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < RECORD_HEADER:
            return None
        ctype, major = data[pos], data[pos + 1]
        (length,) = struct.unpack_from("!H", data, pos + 11)
        end = pos + RECORD_HEADER + length
        if ctype not in RECORD_TYPES or major != 0xFE or end > len(data):
            return None
        records.append(data[pos:end])
        pos = end
    return records or None


@dataclass(slots=True)
class _PeerCheck:
    """The per-connection half of the fingerprint check: what the peer's SDP announced (as the
    raw digest; None if the value is not hex pairs, which no certificate matches) and, once the
    verify callback has run, whether the certificate matched (None: not checked yet)."""

    alg: str
    expected: bytes | None
    ok: bool | None = None

    @classmethod
    def of(cls, alg: str, value: str) -> _PeerCheck:
        """The check for a normalized `(alg, "AB:CD:...")` fingerprint."""
        try:
            expected: bytes | None = bytes.fromhex(value.replace(":", ""))
        except ValueError:
            expected = None
        if expected is not None and format_fingerprint(expected) != value:
            expected = None  # not the `AB:CD:...` form a certificate's digest is compared in
        return cls(alg, expected)


def _verify_peer(conn: SSL.Connection, cert: crypto.X509, _errno: int, depth: int, _ok: int) -> bool:
    # RFC 5763 section 5: the certificate is self-signed; it is authenticated by comparing its
    # digest with the signalled fingerprint, nothing else.
    if depth != 0:
        return True
    check = conn.get_app_data()
    if not isinstance(check, _PeerCheck):  # a connection without its check: never accept
        return False
    # The fingerprint is a hash of the DER bytes (RFC 8122 section 5): hash them as they came,
    # without parsing the certificate further (a peer's odd dates must not raise). OpenSSL calls
    # this once per verification error and once at the end, for the same certificate.
    der = crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)
    check.ok = hashlib.new(_HASHLIB_NAMES[check.alg], der).digest() == check.expected
    return check.ok


def _make_context(identity: DtlsCertificate) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    # No session tickets: WebRTC never resumes a DTLS session (a resumed handshake would skip
    # the certificate, hence the fingerprint check); issuing one cost ~1.5 KiB per connection
    # (bench.memory) and put a NewSessionTicket into our final flight.
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
    # The context lives as long as the process: a server-side session cache in it would keep
    # every call's session (WebRTC never resumes one), and an established association needs no
    # read/write buffer between records (about 7 KiB per call back).
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # RFC 8827 section 6.5: DTLS 1.2 (WebRTC's version; the record parsing here assumes its
    # 13-byte headers, not DTLS 1.3's unified header).
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.use_certificate(identity.certificate)
    ctx.use_privatekey(identity.private_key)
    ctx.check_privatekey()
    ctx.set_tlsext_use_srtp(SrtpProfile.dtls_offer())
    # RFC 5763 section 5: both ends MUST present a certificate (the server requests one).
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_peer)
    return ctx


def _pack_datagrams(records: list[bytes], mtu: int) -> list[bytes]:
    out: list[bytes] = []
    current = b""
    for rec in records:
        if current and len(current) + len(rec) > mtu:
            out.append(current)
            current = b""
        current += rec
    if current:
        out.append(current)
    return out


@dataclass(slots=True)
class DtlsEndpoint:
    """One DTLS-SRTP association over memory BIOs (see the module docstring).

    `remote_fingerprint` is `(hash name, value)` from the peer's SDP `a=fingerprint` line, e.g.
    `("sha-256", "AB:CD:...")`. `release_after` is how long after the handshake OpenSSL's objects
    are kept (None: for the association's life).
    """

    role: DtlsRole
    certificate: DtlsCertificate
    remote_fingerprint: tuple[str, str]
    mtu: int = MTU
    state: DtlsState = DtlsState.HANDSHAKING
    failure_reason: str | None = None
    counters: DtlsCounters = field(default_factory=DtlsCounters)
    release_after: float | None = RELEASE_AFTER
    _conn: SSL.Connection | None = field(init=False, repr=False)
    _out: list[bytes] = field(default_factory=list, repr=False)
    _flight: list[bytes] = field(default_factory=list, repr=False)
    _final_flight: list[bytes] = field(default_factory=list, repr=False)
    _final_resends: int = 0
    _deadline: float | None = None
    _rto: float = INITIAL_RTO
    _check: _PeerCheck = field(init=False, repr=False)
    _profile: SrtpProfile | None = None
    _connected_at: float | None = None
    # What outlives the SSL.Connection once it is released (see the module docstring).
    _keying_material: bytes = field(default=b"", repr=False)
    _close_notify: list[bytes] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        alg, expected = _normalize_fingerprint(*self.remote_fingerprint)
        self.remote_fingerprint = (alg, expected)
        self._check = _PeerCheck.of(alg, expected)
        self._conn = self.certificate.run_openssl(self._new_connection)

    def _new_connection(self) -> SSL.Connection:
        conn = SSL.Connection(self.certificate.context(), None)
        conn.set_app_data(self._check)
        conn.set_ciphertext_mtu(self.mtu)
        if self.role is DtlsRole.CLIENT:
            conn.set_connect_state()
        else:
            conn.set_accept_state()
        return conn

    # --- inputs ---------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin the handshake: a client emits its ClientHello; a server just waits for one."""
        if self.state is DtlsState.HANDSHAKING and self.role is DtlsRole.CLIENT:
            self.certificate.run_openssl(lambda: self._handshake(now))

    def feed_untrusted(self, datagram: bytes, now: float) -> None:
        """Process one datagram classified as DTLS (RFC 7983). Never raises on network input."""
        self.counters.datagrams_in += 1
        if self.state in (DtlsState.FAILED, DtlsState.CLOSED):
            self.counters.after_end += 1
            return
        records = split_records_untrusted(datagram)
        if records is None:
            self.counters.malformed += 1
            return
        # Handshake records once connected: the peer is still handshaking, so our final flight
        # was lost and must be re-sent (RFC 6347 4.2.4).
        if (
            self.state is DtlsState.CONNECTED
            and any(r[0] in (20, 22) for r in records)
            and self._final_flight
            and self._final_resends < MAX_FINAL_RESENDS
        ):
            self._final_resends += 1
            self.counters.retransmits += 1
            self._out.extend(self._final_flight)
        conn = self._conn
        if conn is None:  # released: nothing here can authenticate the record any more
            self.counters.after_release += 1
            return
        self.certificate.run_openssl(lambda: self._feed(conn, datagram, now))

    def _feed(self, conn: SSL.Connection, datagram: bytes, now: float) -> None:
        conn.bio_write(datagram)
        if self.state is DtlsState.HANDSHAKING:
            self._handshake(now)
        if self.state is DtlsState.CONNECTED:
            self._read_after_handshake(conn)
            self._release_if_due(now)

    def next_deadline(self) -> float | None:
        """When `handle_timeout` must next be called (our retransmission timer), or None."""
        return self._deadline if self.state is DtlsState.HANDSHAKING else None

    @property
    def release_at(self) -> float | None:
        """When OpenSSL's objects may be released (a `handle_timeout` at or after it does it), or
        None (not connected yet, already released, or never)."""
        if self._conn is None or self._connected_at is None or self.release_after is None:
            return None
        return self._connected_at + self.release_after

    @property
    def released(self) -> bool:
        """True once the OpenSSL objects were released (only a few stored bytes are left)."""
        return self._conn is None

    def handle_timeout(self, now: float) -> None:
        """Re-send the last flight if its timer has expired (RFC 6347 4.2.4) and back off; once
        connected, release OpenSSL's objects when `release_at` has passed.

        OpenSSL is asked first (`DTLSv1_handle_timeout`): its retransmission re-encodes the
        flight under fresh record sequence numbers, which the peer accepts even when it has
        already seen (and had to discard, e.g. a ChangeCipherSpec that overtook the message
        before it) some of the first copy. Only if OpenSSL's wall-clock timer has not expired
        (a test's fake clock, a wall-clock step) do we re-send the remembered bytes.
        """
        if self.state is DtlsState.CONNECTED:
            release_at = self.release_at
            if release_at is not None and now >= release_at:
                self.certificate.run_openssl(lambda: self._release_if_due(now))
            return
        conn = self._conn
        if (
            self.state is not DtlsState.HANDSHAKING
            or conn is None
            or self._deadline is None
            or now < self._deadline
        ):
            return
        self.certificate.run_openssl(lambda: self._retransmit(conn, now))

    def _retransmit(self, conn: SSL.Connection, now: float) -> None:
        self.counters.retransmits += 1
        try:
            conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._collect(None)
            self._fail(f"DTLS retransmission failed: {exc}")
            return
        fresh = self._collect(None)
        self._rto = min(self._rto * 2, MAX_RTO)
        if fresh:  # OpenSSL re-encoded the flight and doubled its own timer: follow it
            self._flight = fresh
            self._deadline = now + self._timer(self._rto)
        else:
            self._out.extend(self._flight)
            self._deadline = now + self._rto

    def close(self) -> None:
        """Send close_notify (if connected) and end; `outgoing()` then holds the alert."""
        if self.state is DtlsState.CONNECTED:
            conn = self._conn
            if conn is not None:
                self.certificate.run_openssl(lambda: self._shut_down(conn))
            else:
                self._out.extend(self._close_notify)
        if self.state in (DtlsState.HANDSHAKING, DtlsState.CONNECTED):
            self.state = DtlsState.CLOSED
        self._close_notify = []

    # --- outputs --------------------------------------------------------------------------

    def outgoing(self) -> list[bytes]:
        """Datagrams to send to the peer, in order; each call empties the queue."""
        out, self._out = self._out, []
        self.counters.datagrams_out += len(out)
        return out

    @property
    def srtp_profile(self) -> SrtpProfile:
        """The SRTP protection profile the handshake agreed on (RFC 5764 4.1.2)."""
        if self._profile is None or self.state is not DtlsState.CONNECTED:
            raise LocalProtocolError("no SRTP profile before the DTLS handshake completes")
        return self._profile

    def keying_material(self) -> bytes:
        """The exported SRTP keying material (RFC 5764 4.2), `srtp.keys_from_dtls` splits it."""
        if self._profile is None or self.state is not DtlsState.CONNECTED:
            raise LocalProtocolError("no SRTP keying material before the DTLS handshake completes")
        return self._keying_material

    @property
    def is_client(self) -> bool:
        """True if we are the DTLS client (decides which half of the keys we write with)."""
        return self.role is DtlsRole.CLIENT

    # --- internals ------------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        self.state = DtlsState.FAILED
        self.failure_reason = reason
        self._deadline = None

    def _handshake(self, now: float) -> None:
        conn = self._conn
        assert conn is not None  # released only once connected
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            self._collect(now)
            return
        except SSL.Error as exc:
            self._collect(None)  # the alert OpenSSL queued, if any
            if self._check.ok is False:
                self._fail("fingerprint mismatch")
            else:
                self._fail(f"DTLS handshake failed: {exc}")
            return
        self._final_flight = self._collect(None)  # a server's final flight (CCS, Finished)
        if self._check.ok is not True:
            # Cannot happen with VERIFY_FAIL_IF_NO_PEER_CERT, but never trust an unchecked peer.
            self._fail("fingerprint mismatch")
            return
        selected = conn.get_selected_srtp_profile()
        try:
            self._profile = SrtpProfile.from_dtls_name(selected)
        except ValueError:
            # RFC 5764 4.1.2: without an agreed profile there is no SRTP to key.
            self._fail("no common DTLS-SRTP profile")
            return
        self.state = DtlsState.CONNECTED
        # Exported once, here (the caller keys SRTP at once, and it outlives the release).
        self._keying_material = bytes(
            conn.export_keying_material(EXPORTER_LABEL, self._profile.keying_material_length)
        )
        self._deadline = None
        self._flight = []  # our earlier flights (the certificate among them) are never re-sent now
        self._connected_at = now

    def _shut_down(self, conn: SSL.Connection) -> None:
        with contextlib.suppress(SSL.Error):
            conn.shutdown()
        self._collect(None)

    def _read_after_handshake(self, conn: SSL.Connection) -> None:
        while True:
            try:
                conn.recv(2048)  # WebRTC audio carries no DTLS application data: discard
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self.state = DtlsState.CLOSED
                self.failure_reason = "peer sent close_notify"
                break
            except SSL.Error as exc:
                self._fail(f"DTLS error after handshake: {exc}")
                break
        self._collect(None)  # e.g. a re-sent final flight answering the peer's retransmission

    def _release_if_due(self, now: float) -> None:
        """Free the SSL.Connection once `release_at` has passed, keeping the keying material and
        an encoded close_notify (see the module docstring)."""
        release_at = self.release_at
        conn = self._conn
        if conn is None or release_at is None or now < release_at or self.state is not DtlsState.CONNECTED:
            return
        self._collect(None)  # anything OpenSSL still had to say goes out first
        with contextlib.suppress(SSL.Error):
            conn.shutdown()  # our close_notify, encoded now, sent by close()
        self._close_notify = self._read_bio(conn)
        conn.set_app_data(None)
        self._conn = None

    def _timer(self, fallback: float) -> float:
        """Seconds until the retransmission: OpenSSL's own timer if it runs (so that its
        `DTLSv1_handle_timeout` finds it expired), plus a little slack, else `fallback`."""
        assert self._conn is not None  # only while handshaking
        remaining = self._conn.DTLSv1_get_timeout()
        return fallback if remaining is None else remaining + TIMER_SLACK

    def _read_records(self, conn: SSL.Connection) -> list[bytes]:
        """The DTLS records OpenSSL wrote since the last read."""
        chunks: list[bytes] = []
        while True:
            try:
                chunks.append(conn.bio_read(65536))
            except SSL.WantReadError:
                break
        if not chunks:
            return []
        records = split_records_untrusted(b"".join(chunks))
        if records is None:  # OpenSSL wrote something that is not records: cannot happen
            raise LocalProtocolError("OpenSSL produced a malformed DTLS record stream")
        return records

    def _read_bio(self, conn: SSL.Connection) -> list[bytes]:
        """What OpenSSL wrote, as datagrams of whole records under the MTU."""
        return _pack_datagrams(self._read_records(conn), self.mtu)

    def _collect(self, now: float | None) -> list[bytes]:
        """Move what OpenSSL wrote into datagrams; with `now`, it is a new flight to time."""
        if self._conn is None:
            return []
        records = self._read_records(self._conn)
        if not records:
            return []
        datagrams = _pack_datagrams(records, self.mtu)
        self._out.extend(datagrams)
        only_alerts = all(r[0] == 21 for r in records)
        if now is not None and self.state is DtlsState.HANDSHAKING and not only_alerts:
            # A new flight (an alert alone is sent once, never retransmitted).
            self._flight = datagrams
            self._rto = INITIAL_RTO
            self._deadline = now + self._timer(self._rto)
        return datagrams


def warm_up(certificate: DtlsCertificate) -> bool:
    """One DTLS-SRTP handshake in memory, `certificate` against a throwaway client; True if it
    connected. For a process's start (memory per call, issue 6).

    A process's first handshake pages in OpenSSL's DTLS, ECDHE and ECDSA code and builds its
    lazily made tables: ~1 MiB resident that the first call would otherwise carry (and wait for).
    Everything built here is freed on return but `certificate`'s shared `SSL.Context`.
    """
    peer = DtlsCertificate.generate("warm-up")
    server = DtlsEndpoint(DtlsRole.SERVER, certificate, ("sha-256", peer.fingerprint_sha256))
    client = DtlsEndpoint(DtlsRole.CLIENT, peer, ("sha-256", certificate.fingerprint_sha256))
    client.start(0.0)
    for _ in range(8):  # a DTLS 1.2 handshake takes 2 round trips
        for datagram in client.outgoing():
            server.feed_untrusted(datagram, 0.0)
        for datagram in server.outgoing():
            client.feed_untrusted(datagram, 0.0)
        if server.state is DtlsState.CONNECTED and client.state is DtlsState.CONNECTED:
            server.keying_material()
            return True
    return False
