"""Caller authentication for MCCP `call` messages, with brute-force protection. No I/O, no clock.

Theory of operation
-------------------
A login is (source address, extension number, password). It goes through three steps so that the slow
part (scrypt, ~60 ms) can run in a worker thread while the bookkeeping stays in the Trio thread:

1. `admit(source=, extension=, now=)` looks at the throttle state. If the source address or the extension
   is locked out, the answer is final (`LOCKED_OUT`, MCCP 429) and no hash is computed. In upstream mode
   (an upstream proxy is configured) the answer is final too (`UPSTREAM`): the password check is left to
   the upstream's digest challenge and the extension need not be in the local table. Otherwise a
   `Pending` is returned, holding the extension entry, or a dummy entry when the number is unknown.
2. `Pending.verify(password)` runs scrypt and compares with `hmac.compare_digest`. It touches no shared
   state. An unknown number is checked against the dummy, which costs the same time as a known one.
3. `conclude(pending, ok, now=)` records a failure and gives the `AuthResult`. An unknown number and a
   wrong password give the same `REJECTED` (MCCP 403).

`check()` runs the three steps in one call (for tests and simple callers).

Throttling counts failures per source address and per extension, each in a sliding window of
`window` seconds. Once a key has `max_failures` failures, every further attempt that involves it, whether
right or wrong, carries a `delay` that the caller waits before answering. The delay is `delay` seconds,
doubled for each failure past `max_failures` and capped at `MAX_DELAY`. Because successes are delayed
too, a quick answer does not give away a correct password. When a key reaches `lockout_failures` it is
locked for `lockout` seconds. The result that starts a lock-out has `lockout_started` set, so the caller
logs the refusal once per lock-out. A failure reported by the upstream (`record_failure`) counts like a
local failure.
"""

from __future__ import annotations

import hmac
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from bridge.config import Config
from bridge.extensions import Extension, ExtensionTable, make_extension

MAX_DELAY = 30.0
MAX_TRACKED = 10_000  # failure records kept per kind before expired ones are pruned


class AuthOutcome(Enum):
    """How a login ended."""

    ACCEPTED = "accepted"  # local extension, right password
    UPSTREAM = "upstream"  # not checked here: the upstream's digest challenge decides
    REJECTED = "rejected"  # unknown extension or wrong password: MCCP hangup 403
    LOCKED_OUT = "locked-out"  # too many failures: MCCP hangup 429


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The answer to one login.

    `delay` is how long the caller waits before acting on the result. `retry_after` is set for
    `LOCKED_OUT` and gives the seconds left in the lock-out. `lockout_started` names the keys
    (e.g. `"source 192.0.2.1"`) whose lock-out began with this attempt, so each lock-out is logged once.
    """

    outcome: AuthOutcome
    extension: str
    delay: float = 0.0
    retry_after: float = 0.0
    lockout_started: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        """Whether the call may proceed."""
        return self.outcome in (AuthOutcome.ACCEPTED, AuthOutcome.UPSTREAM)

    @property
    def mccp_code(self) -> int | None:
        """The MCCP `hangup` code for a refusal (403 or 429), None when allowed."""
        match self.outcome:
            case AuthOutcome.ACCEPTED | AuthOutcome.UPSTREAM:
                return None
            case AuthOutcome.REJECTED:
                return 403
            case AuthOutcome.LOCKED_OUT:
                return 429


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """The brute-force figures (see the module docstring)."""

    max_failures: int = 5
    window: float = 300.0
    delay: float = 1.0
    lockout_failures: int = 10
    lockout: float = 900.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_failures <= self.lockout_failures:
            raise ValueError("need 1 <= max_failures <= lockout_failures")

    @classmethod
    def from_config(cls, config: Config) -> ThrottlePolicy:
        """The policy given by the `auth_*` settings."""
        return cls(
            max_failures=config.auth_max_failures,
            window=config.auth_window,
            delay=config.auth_delay,
            lockout_failures=config.auth_lockout_failures,
            lockout=config.auth_lockout,
        )


@dataclass(slots=True)
class _Record:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = float("-inf")


@dataclass(frozen=True, slots=True)
class Pending:
    """A login admitted for a password check: run `verify` (slow, thread-safe), then `conclude`."""

    source: str
    extension: str
    delay: float
    entry: Extension = field(repr=False)
    known: bool

    def verify(self, password: str) -> bool:
        """scrypt + constant-time compare; False for an unknown extension, after the same work."""
        ok = self.entry.check_password(password)
        # Fold `known` in without a branch on the password result (same work for both cases).
        return hmac.compare_digest(bytes([ok, self.known]), b"\x01\x01")


class Authenticator:
    """Checks MCCP logins against the extension table; see the module docstring for the rules."""

    def __init__(
        self,
        table: ExtensionTable,
        *,
        policy: ThrottlePolicy | None = None,
        realm: str = "mccp-bridge",
        upstream: bool = False,
        dummy: Extension | None = None,
    ) -> None:
        self._table = table
        self.policy = policy or ThrottlePolicy()
        self.upstream = upstream
        # An entry that no password matches in practice, hashed like the real ones (same cost).
        self._dummy = dummy or make_extension("dummy", "\x00unmatchable", realm=realm)
        self._sources: dict[str, _Record] = {}
        self._extensions: dict[str, _Record] = {}

    @property
    def table(self) -> ExtensionTable:
        """The extension table in use."""
        return self._table

    def replace_table(self, table: ExtensionTable) -> None:
        """Swap in a reloaded table (throttle state is kept)."""
        self._table = table

    # -- the three steps ---------------------------------------------------------------------------

    def admit(self, *, source: str, extension: str, now: float) -> AuthResult | Pending:
        """Step 1: a final `AuthResult` (locked out, or upstream mode), or a `Pending` password check."""
        records = self._records(source, extension, now)
        locked_until = max(r.locked_until for r in records)
        if locked_until > now:
            return AuthResult(AuthOutcome.LOCKED_OUT, extension, retry_after=locked_until - now)
        delay = self._delay(records)
        if self.upstream:
            return AuthResult(AuthOutcome.UPSTREAM, extension, delay=delay)
        entry = self._table.get(extension)
        known = entry is not None
        return Pending(source, extension, delay, entry if entry is not None else self._dummy, known)

    def conclude(self, pending: Pending, ok: bool, *, now: float) -> AuthResult:
        """Step 3: record the outcome of `pending.verify` and give the result."""
        if ok:
            return AuthResult(AuthOutcome.ACCEPTED, pending.extension, delay=pending.delay)
        return self.record_failure(
            source=pending.source, extension=pending.extension, now=now, delay=pending.delay
        )

    def check(self, *, source: str, extension: str, password: str, now: float) -> AuthResult:
        """All three steps at once (blocks for one scrypt)."""
        admitted = self.admit(source=source, extension=extension, now=now)
        if isinstance(admitted, AuthResult):
            return admitted
        return self.conclude(admitted, admitted.verify(password), now=now)

    def record_failure(self, *, source: str, extension: str, now: float, delay: float = 0.0) -> AuthResult:
        """Count a failed login (also used when the upstream refused the credentials)."""
        started = []
        for kind, key, record in self._labelled(source, extension, now):
            record.failures.append(now)
            if len(record.failures) >= self.policy.lockout_failures and record.locked_until <= now:
                record.locked_until = now + self.policy.lockout
                record.failures.clear()
                started.append(f"{kind} {key}")
        if started:
            return AuthResult(
                AuthOutcome.LOCKED_OUT,
                extension,
                delay=delay,
                retry_after=self.policy.lockout,
                lockout_started=tuple(started),
            )
        return AuthResult(AuthOutcome.REJECTED, extension, delay=delay)

    def is_locked(self, *, source: str = "", extension: str = "", now: float) -> bool:
        """Whether this source or extension is locked out at `now`."""
        return any(r.locked_until > now for r in self._records(source, extension, now))

    # -- bookkeeping -------------------------------------------------------------------------------

    def _delay(self, records: tuple[_Record, ...]) -> float:
        count = max(len(r.failures) for r in records)
        if count < self.policy.max_failures or self.policy.delay <= 0:
            return 0.0
        return min(MAX_DELAY, self.policy.delay * 2.0 ** min(count - self.policy.max_failures, 16))

    def _records(self, source: str, extension: str, now: float) -> tuple[_Record, ...]:
        return tuple(record for _, _, record in self._labelled(source, extension, now))

    def _labelled(self, source: str, extension: str, now: float) -> list[tuple[str, str, _Record]]:
        out = []
        for kind, key, table in (
            ("source", source, self._sources),
            ("extension", extension, self._extensions),
        ):
            if not key:
                continue
            if len(table) >= MAX_TRACKED and key not in table:
                self._prune(table, now)
            record = table.setdefault(key, _Record())
            while record.failures and record.failures[0] <= now - self.policy.window:
                record.failures.popleft()
            out.append((kind, key, record))
        return out

    def _prune(self, table: dict[str, _Record], now: float) -> None:
        horizon = now - self.policy.window
        for key in [
            k
            for k, r in table.items()
            if r.locked_until <= now and (not r.failures or r.failures[-1] <= horizon)
        ]:
            del table[key]
        if len(table) >= MAX_TRACKED:
            # Still full of live records (a flood of sources): drop the ones whose last failure is oldest.
            by_age = sorted(
                table, key=lambda k: table[k].failures[-1] if table[k].failures else float("-inf")
            )
            for key in by_age[: len(table) - MAX_TRACKED + 1]:
                if table[key].locked_until <= now:
                    del table[key]
