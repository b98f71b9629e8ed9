"""The embedded registrar's location service: a bindings table, and stateless digest nonces.

Theory of operation (RFC 3261 §10.3, "Processing REGISTER Requests"):

* An address-of-record (AOR) is keyed by its user part (the bridge serves one domain). Each AOR
  holds several bindings (contacts), each with its own expiry, and the Call-ID/CSeq of the REGISTER
  that last touched it.
* `Registrar.register()` applies one REGISTER atomically (§10.3 steps 6-8): every contact is
  checked first, then all are applied, or none is. `*` removes every binding and is only valid
  alone with Expires: 0. An expiry of 0 removes that contact. A request whose Call-ID matches a
  binding but whose CSeq is not higher is out of order and rejected (§10.3 step 7).
* Time is passed in (`now`, seconds on any monotonic clock); expired bindings are dropped lazily
  at every call, so there is no timer to drive.
* `resolve(user, now)` is what the bridge routes with: contacts, or 404 for an unknown user, or 480
  for a known user with no live binding.

The nonce helpers make the digest challenge stateless: the nonce carries its issue time and an
HMAC of it under a key only the bridge knows, so any nonce can be checked later without a table.

Pure module: no I/O, no clock; the key is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "Binding",
    "ContactSpec",
    "NonceCheck",
    "RegisterOutcome",
    "Registrar",
    "RegistrarError",
    "check_nonce",
    "make_nonce",
]


class RegistrarError(ValueError):
    """A REGISTER the registrar refuses; `status` is the SIP response to send (400, 423, 500)."""

    def __init__(self, status: int, reason: str, *, min_expires: int | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.min_expires = min_expires


@dataclass(frozen=True, slots=True)
class ContactSpec:
    """One Contact of a REGISTER, as extracted by the caller: its URI and its `expires`/`q` params.

    `uri` is the bare URI (no angle brackets). `uri == "*"` is the wildcard.
    """

    uri: str
    expires: int | None = None
    q: float | None = None


@dataclass(frozen=True, slots=True)
class Binding:
    """A live binding of an AOR to a contact URI."""

    contact: str
    expires_at: float
    call_id: str
    cseq: int
    q: float = 1.0
    # Where the REGISTER came from (host, port, transport), for reaching a contact behind NAT.
    source: tuple[str, int, str] | None = None

    def expires_in(self, now: float) -> int:
        """Whole seconds left, for the `expires` parameter of the 200 OK's Contact."""
        return max(0, int(self.expires_at - now + 0.5))


@dataclass(frozen=True, slots=True)
class RegisterOutcome:
    """The result of a successful REGISTER: the AOR's bindings after it (for the 200 OK)."""

    user: str
    bindings: tuple[Binding, ...]


@dataclass(slots=True)
class Registrar:
    """The location service. `known(user)` says whether a user exists (for 404 vs 480)."""

    known: Callable[[str], bool] = field(default=lambda _user: True)
    default_expires: int = 3600
    min_expires: int = 10
    max_expires: int = 7200
    max_bindings_per_aor: int = 10
    _table: dict[str, dict[str, Binding]] = field(default_factory=dict)

    def register(
        self,
        user: str,
        contacts: Sequence[ContactSpec],
        *,
        call_id: str,
        cseq: int,
        expires_header: int | None,
        now: float,
        source: tuple[str, int, str] | None = None,
    ) -> RegisterOutcome:
        """Apply one REGISTER for `user` (§10.3 steps 6-8). An empty `contacts` is a query.

        Raises RegistrarError (400, 403 too many bindings, 423, 500); a refusal changes nothing.
        """
        self._purge(user, now)
        current = dict(self._table.get(user, {}))
        if any(c.uri == "*" for c in contacts):
            # §10.3 step 6: "*" only alone and only with Expires: 0.
            if len(contacts) != 1 or expires_header != 0:
                raise RegistrarError(400, "Invalid wildcard Contact")
            for b in current.values():
                # §10.3 step 6: same Call-ID with a CSeq not higher -> out of order.
                if b.call_id == call_id and cseq <= b.cseq:
                    raise RegistrarError(500, "Out of order REGISTER")
            self._table.pop(user, None)
            return RegisterOutcome(user, ())
        changes: list[tuple[str, int, float]] = []
        for c in contacts:
            expires = c.expires if c.expires is not None else expires_header
            if expires is None:
                expires = self.default_expires
            if expires < 0:
                raise RegistrarError(400, "Negative expiry")
            # §10.3 step 7: a registrar MAY reject a too-short interval with 423 and Min-Expires.
            if 0 < expires < self.min_expires:
                raise RegistrarError(423, "Interval Too Brief", min_expires=self.min_expires)
            expires = min(expires, self.max_expires)
            old = current.get(c.uri)
            if old is not None and old.call_id == call_id and cseq <= old.cseq:
                raise RegistrarError(500, "Out of order REGISTER")
            q = 1.0 if c.q is None else c.q
            if not 0.0 <= q <= 1.0:
                raise RegistrarError(400, "Invalid q value")
            changes.append((c.uri, expires, q))
        for uri, expires, q in changes:
            if expires == 0:
                current.pop(uri, None)
            else:
                current[uri] = Binding(uri, now + expires, call_id, cseq, q, source)
        if len(current) > self.max_bindings_per_aor:
            raise RegistrarError(403, "Too many bindings")
        if current:
            self._table[user] = current
        else:
            self._table.pop(user, None)
        return RegisterOutcome(user, self._sorted(current))

    def bindings(self, user: str, now: float) -> tuple[Binding, ...]:
        """The live bindings of `user`, highest q first."""
        self._purge(user, now)
        return self._sorted(self._table.get(user, {}))

    def lookup(self, user: str, now: float) -> list[str]:
        """The live contact URIs of `user`, highest q first (empty if none)."""
        return [b.contact for b in self.bindings(user, now)]

    def resolve(self, user: str, now: float) -> tuple[int, list[Binding]]:
        """Where to route a call to `user`: (200, bindings), (404, []) unknown, (480, []) not registered."""
        if not self.known(user):
            return 404, []
        found = list(self.bindings(user, now))
        return (200, found) if found else (480, [])

    def expire(self, now: float) -> int:
        """Drop every expired binding; returns how many were dropped."""
        return sum(self._purge(user, now) for user in list(self._table))

    def _purge(self, user: str, now: float) -> int:
        table = self._table.get(user)
        if table is None:
            return 0
        dead = [uri for uri, b in table.items() if b.expires_at <= now]
        for uri in dead:
            del table[uri]
        if not table:
            del self._table[user]
        return len(dead)

    @staticmethod
    def _sorted(table: dict[str, Binding]) -> tuple[Binding, ...]:
        return tuple(sorted(table.values(), key=lambda b: (-b.q, b.contact)))


class NonceCheck(Enum):
    """The verdict on a nonce returned by a client."""

    VALID = "valid"
    STALE = "stale"  # ours, but too old: challenge again with stale=true (RFC 7616 §3.3)
    INVALID = "invalid"


def make_nonce(key: bytes, now: float) -> str:
    """A stateless nonce: issue time (ms) + HMAC-SHA256(key, time), URL-safe base64."""
    stamp = int(now * 1000).to_bytes(8, "big", signed=True)
    mac = hmac.new(key, stamp, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(stamp + mac).decode().rstrip("=")


def check_nonce(key: bytes, nonce: str, now: float, *, max_age: float = 300.0) -> NonceCheck:
    """Check a nonce made by `make_nonce` with the same key: VALID, STALE (too old) or INVALID."""
    if len(nonce) != 32 or not nonce.isascii():
        return NonceCheck.INVALID
    try:
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
    except ValueError:
        return NonceCheck.INVALID
    if len(raw) != 24:
        return NonceCheck.INVALID
    stamp, mac = raw[:8], raw[8:]
    if not hmac.compare_digest(mac, hmac.new(key, stamp, hashlib.sha256).digest()[:16]):
        return NonceCheck.INVALID
    issued = int.from_bytes(stamp, "big", signed=True) / 1000
    if issued > now + 1.0:
        return NonceCheck.INVALID
    return NonceCheck.STALE if now - issued > max_age else NonceCheck.VALID
