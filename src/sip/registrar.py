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
* Persistence is the caller's: `export(now, wall_now=...)` gives the live bindings as plain JSON-able
  records whose expiry is wall-clock time (seconds since the epoch), and `load(records, now,
  wall_now=...)` replaces the table with them, dropping the expired ones. `on_change` is called after
  every REGISTER that changed the table, so the caller knows when to save. `now` stays monotonic; the
  caller passes the wall clock read at the same moment, and the two are only related at export/load.

The nonce helpers make the digest challenge stateless: the nonce carries its issue time and an
HMAC of it under a key only the bridge knows, so any nonce can be checked later without a table.

Pure module: no I/O, no clock; the key is passed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

__all__ = [
    "Binding",
    "BindingsFormatError",
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


class BindingsFormatError(ValueError):
    """Records given to `Registrar.load` are not what `Registrar.export` writes; `str()` says where."""


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
    # Called after every REGISTER that changed the table (bindings added, refreshed or removed).
    on_change: Callable[[], None] | None = None
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
            removed = self._table.pop(user, None)
            if removed:
                self._changed()
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
        if changes:
            self._changed()
        return RegisterOutcome(user, self._sorted(current))

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

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

    def export(self, now: float, *, wall_now: float) -> list[dict[str, object]]:
        """Every live binding as a JSON-able record; `expires` is wall-clock (epoch seconds).

        `wall_now` is the wall clock read at the same moment as `now` (the monotonic clock).
        """
        self.expire(now)
        records: list[dict[str, object]] = []
        for user in sorted(self._table):
            for b in self._sorted(self._table[user]):
                records.append(
                    {
                        "user": user,
                        "contact": b.contact,
                        "expires": round(b.expires_at - now + wall_now, 3),
                        "call_id": b.call_id,
                        "cseq": b.cseq,
                        "q": b.q,
                        "source": list(b.source) if b.source is not None else None,
                    }
                )
        return records

    def load(self, records: object, now: float, *, wall_now: float) -> int:
        """Replace the table with `records` (as `export` made them); returns the live bindings loaded.

        Expired records are dropped; an expiry further than `max_expires` away (the wall clock went
        back) is cut to `max_expires`. Raises `BindingsFormatError` and changes nothing if any record
        is malformed. Does not call `on_change`.
        """
        if not isinstance(records, list):
            raise BindingsFormatError(f"bindings must be a list, got {type(records).__name__}")
        table: dict[str, dict[str, Binding]] = {}
        for index, record in enumerate(records):
            user, binding = _binding_from_record(record, index, now, wall_now)
            if binding.expires_at <= now:
                continue
            if binding.expires_at > now + self.max_expires:
                binding = replace(binding, expires_at=now + self.max_expires)
            table.setdefault(user, {})[binding.contact] = binding
        self._table = table
        return sum(len(bindings) for bindings in table.values())

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


def _record_text(record: dict[object, object], name: str, where: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise BindingsFormatError(f"{where}: {name} must be a non-empty string, got {value!r}")
    return value


def _binding_from_record(record: object, index: int, now: float, wall_now: float) -> tuple[str, Binding]:
    where = f"binding {index}"
    if not isinstance(record, dict):
        raise BindingsFormatError(f"{where}: must be an object, got {type(record).__name__}")
    user = _record_text(record, "user", where)
    contact = _record_text(record, "contact", where)
    call_id = _record_text(record, "call_id", where)
    expires, cseq, q, source = (
        record.get("expires"),
        record.get("cseq"),
        record.get("q", 1.0),
        record.get("source"),
    )
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise BindingsFormatError(f"{where}: expires must be a number, got {expires!r}")
    if isinstance(cseq, bool) or not isinstance(cseq, int) or not 0 <= cseq < 2**31:
        raise BindingsFormatError(f"{where}: cseq must be an integer 0-2**31, got {cseq!r}")
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 <= q <= 1.0:
        raise BindingsFormatError(f"{where}: q must be a number 0-1, got {q!r}")
    parsed_source: tuple[str, int, str] | None = None
    match source:
        case None:
            pass
        case [str(host), int(port), str(transport)] if not isinstance(port, bool) and 0 < port < 65536:
            parsed_source = (host, port, transport)
        case _:
            raise BindingsFormatError(f"{where}: source must be [host, port, transport], got {source!r}")
    return user, Binding(contact, float(expires) - wall_now + now, call_id, cseq, float(q), parsed_source)


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
