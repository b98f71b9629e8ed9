"""Caller authentication for MCCP `call` messages, with brute-force protection and a login budget.

Theory of operation
-------------------
A login is (source address, extension number, password). It goes through three steps so that the slow
part (scrypt, ~60 ms) can run in a worker thread while the bookkeeping stays in the Trio thread:

1. `admit(source=, extension=, now=, password=)` looks at the throttle state. If the source address or
   the extension is locked out, the answer is final (`LOCKED_OUT`, MCCP 429) and no hash is computed. In
   upstream mode (an upstream proxy is configured) the answer is final too (`UPSTREAM`): the password
   check is left to the upstream's digest challenge and the extension need not be in the local table.
   A password the credentials cache verified recently is final as well (`ACCEPTED`, `cached`).
   Otherwise a `Pending` is returned, holding the extension entry, or a dummy entry when the number is
   unknown.
2. `Pending.verify(password)` asks the cache, then runs scrypt and compares with `hmac.compare_digest`;
   a right password is remembered in the cache. An unknown number is checked against the dummy, which
   costs the same time as a known one, and is never cached.
3. `conclude(pending, ok, now=)` records a failure and gives the `AuthResult`. An unknown number and a
   wrong password give the same `REJECTED` (MCCP 403).

`check()` runs the three steps in one call (for tests and simple callers). `authenticate()` runs them
from Trio: scrypt in a worker thread, through a `KdfGate`.

The credentials cache (`CredentialsCache`) keeps, per extension, HMAC-SHA-256 under a per-process random
key of (the stored scrypt hash, the password) for `ttl` seconds (default 10 min, 0 disables) after a
successful scrypt check. A repeat login (redial, page reload, a softphone placing many calls) then costs
one HMAC (microseconds) instead of one scrypt. It never makes a wrong password cheaper: a password that
does not match the cached tag goes through scrypt and counts as a failure, and lock-outs are checked
before the cache. The tag binds the stored hash, so a changed password never matches an old tag; the
whole cache is dropped when the table is replaced (SIGHUP) and it holds at most `max_entries` entries
(expired ones first, then the oldest, make room). A stolen tag is no more use than the scrypt hash beside
it: the key never leaves the process.

The login budget (`KdfGate`) bounds the scrypt work of one worker whatever the callers do: at most
`concurrency` checks run at once (each in a worker thread, 16 MiB), at most `max_waiting` more wait for a
slot, each for at most `max_wait` seconds; a login beyond that is refused at once with `BUSY` (MCCP 503),
without a hash and without counting as a failure. Cached logins skip the gate entirely, so a login
flood cannot keep known callers out.

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
import secrets
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import trio
from bridge.config import Config
from bridge.extensions import Extension, ExtensionTable, make_extension

MAX_DELAY = 30.0
MAX_TRACKED = 10_000  # failure records kept per kind before expired ones are pruned
CACHE_TTL = 600.0  # seconds a verified password is trusted without scrypt (0: no cache)
CACHE_MAX_ENTRIES = 10_000
# The login budget of one worker (one per core). One scrypt at a time leaves the event loop (media,
# signalling) at least half of its core under a login flood; two would not serve more logins on that
# core, only take more of it (and 16 MiB more). About 1 s of scrypt work may wait (~60 ms each).
KDF_CONCURRENCY = 1  # scrypt checks at once per worker (16 MiB and ~60 ms of CPU each)
KDF_MAX_WAITING = 16  # logins waiting for a scrypt slot before the next is refused at once
KDF_MAX_WAIT = 1.0  # seconds a login waits for a slot before it is refused (MCCP 503)


class AuthOutcome(Enum):
    """How a login ended."""

    ACCEPTED = "accepted"  # local extension, right password
    UPSTREAM = "upstream"  # not checked here: the upstream's digest challenge decides
    REJECTED = "rejected"  # unknown extension or wrong password: MCCP hangup 403
    LOCKED_OUT = "locked-out"  # too many failures: MCCP hangup 429
    BUSY = "busy"  # the login budget is spent (KdfGate): MCCP hangup 503, not a failure


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The answer to one login.

    `delay` is how long the caller waits before acting on the result. `retry_after` is set for
    `LOCKED_OUT` and gives the seconds left in the lock-out. `lockout_started` names the keys
    (e.g. `"source 192.0.2.1"`) whose lock-out began with this attempt, so each lock-out is logged once.
    `cached` says an `ACCEPTED` came from the credentials cache (no scrypt).
    """

    outcome: AuthOutcome
    extension: str
    delay: float = 0.0
    retry_after: float = 0.0
    lockout_started: tuple[str, ...] = ()
    cached: bool = False

    @property
    def allowed(self) -> bool:
        """Whether the call may proceed."""
        return self.outcome in (AuthOutcome.ACCEPTED, AuthOutcome.UPSTREAM)

    @property
    def mccp_code(self) -> int | None:
        """The MCCP `hangup` code for a refusal (403, 429 or 503), None when allowed."""
        match self.outcome:
            case AuthOutcome.ACCEPTED | AuthOutcome.UPSTREAM:
                return None
            case AuthOutcome.REJECTED:
                return 403
            case AuthOutcome.LOCKED_OUT:
                return 429
            case AuthOutcome.BUSY:
                return 503


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


class CredentialsCache:
    """Recently verified passwords, per extension, as keyed hashes; see the module docstring.

    Thread-safe: `Pending.verify` asks and fills it from worker threads.
    """

    def __init__(
        self, *, ttl: float = CACHE_TTL, max_entries: int = CACHE_MAX_ENTRIES, key: bytes | None = None
    ) -> None:
        if ttl < 0 or max_entries < 1:
            raise ValueError("need ttl >= 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._key = key if key is not None else secrets.token_bytes(32)
        self._entries: dict[str, tuple[bytes, float]] = {}  # number -> (tag, expiry), oldest first
        self._lock = threading.Lock()
        self.generation = 0  # bumped by clear(): a check begun before it is not remembered
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _tag(self, entry: Extension, password: str) -> bytes:
        # Length-prefixed fields, bound to the stored hash: a new password (new salt and key) never
        # matches a tag made for the old one.
        parts = (entry.number.encode(), entry.scrypt.salt, entry.scrypt.key)
        data = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
        return hmac.digest(self._key, data + password.encode("utf-8", "surrogatepass"), "sha256")

    def hit(self, entry: Extension, password: str, now: float) -> bool:
        """Whether `password` was verified for `entry` less than `ttl` ago (constant-time compare)."""
        if self.ttl <= 0:
            return False
        with self._lock:
            found = self._entries.get(entry.number)
            if found is not None and found[1] <= now:
                del self._entries[entry.number]
                found = None
        if found is None:
            return False
        ok = hmac.compare_digest(found[0], self._tag(entry, password))
        if ok:
            with self._lock:
                self.hits += 1
        return ok

    def remember(self, entry: Extension, password: str, now: float, generation: int) -> None:
        """Trust `password` for `entry` until `now + ttl`, unless the cache was cleared since `generation`."""
        if self.ttl <= 0:
            return
        tag = self._tag(entry, password)
        with self._lock:
            if generation != self.generation:
                return  # the table was reloaded while this check ran
            self._entries.pop(entry.number, None)  # re-inserted last: dict order is age order
            if len(self._entries) >= self.max_entries:
                self._evict(now)
            self._entries[entry.number] = (tag, now + self.ttl)

    def _evict(self, now: float) -> None:
        for number in [n for n, (_, expiry) in self._entries.items() if expiry <= now]:
            del self._entries[number]
        excess = len(self._entries) - self.max_entries + 1
        for number in list(self._entries)[: max(0, excess)]:
            del self._entries[number]

    def clear(self) -> None:
        """Forget every entry (the extension table was replaced)."""
        with self._lock:
            self._entries.clear()
            self.generation += 1


@dataclass(frozen=True, slots=True)
class Pending:
    """A login admitted for a password check: run `verify` (slow, thread-safe), then `conclude`."""

    source: str
    extension: str
    delay: float
    entry: Extension = field(repr=False)
    known: bool
    cache: CredentialsCache | None = field(default=None, repr=False, compare=False)
    now: float = 0.0  # when it was admitted: a remembered password expires `ttl` after this
    generation: int = 0  # the cache's generation at admission

    def verify(self, password: str) -> bool:
        """Cache, else scrypt + constant-time compare; False for an unknown extension, after the same work."""
        if self.known and self.cache is not None and self.cache.hit(self.entry, password, self.now):
            return True
        ok = self.entry.check_password(password)
        # Fold `known` in without a branch on the password result (same work for both cases).
        verified = hmac.compare_digest(bytes([ok, self.known]), b"\x01\x01")
        if verified and self.cache is not None:
            self.cache.remember(self.entry, password, self.now, self.generation)
        return verified


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
        cache: CredentialsCache | None = None,
    ) -> None:
        self._table = table
        self.policy = policy or ThrottlePolicy()
        self.upstream = upstream
        self.cache = cache if cache is not None else CredentialsCache()
        # An entry that no password matches in practice, hashed like the real ones (same cost).
        self._dummy = dummy or make_extension("dummy", "\x00unmatchable", realm=realm)
        self._sources: dict[str, _Record] = {}
        self._extensions: dict[str, _Record] = {}

    @property
    def table(self) -> ExtensionTable:
        """The extension table in use."""
        return self._table

    def replace_table(self, table: ExtensionTable) -> None:
        """Swap in a reloaded table (throttle state is kept, the credentials cache is dropped)."""
        self._table = table
        self.cache.clear()

    # -- the three steps ---------------------------------------------------------------------------

    def admit(
        self, *, source: str, extension: str, now: float, password: str | None = None
    ) -> AuthResult | Pending:
        """Step 1: a final `AuthResult` (locked out, upstream mode, or `password` found in the
        credentials cache), or a `Pending` password check."""
        records = self._records(source, extension, now)
        locked_until = max(r.locked_until for r in records)
        if locked_until > now:
            return AuthResult(AuthOutcome.LOCKED_OUT, extension, retry_after=locked_until - now)
        delay = self._delay(records)
        if self.upstream:
            return AuthResult(AuthOutcome.UPSTREAM, extension, delay=delay)
        entry = self._table.get(extension)
        if entry is None:
            return Pending(source, extension, delay, self._dummy, False)
        if password is not None and self.cache.hit(entry, password, now):
            return AuthResult(AuthOutcome.ACCEPTED, extension, delay=delay, cached=True)
        return Pending(source, extension, delay, entry, True, self.cache, now, self.cache.generation)

    def conclude(self, pending: Pending, ok: bool, *, now: float) -> AuthResult:
        """Step 3: record the outcome of `pending.verify` and give the result."""
        if ok:
            return AuthResult(AuthOutcome.ACCEPTED, pending.extension, delay=pending.delay)
        return self.record_failure(
            source=pending.source, extension=pending.extension, now=now, delay=pending.delay
        )

    def check(self, *, source: str, extension: str, password: str, now: float) -> AuthResult:
        """All three steps at once (blocks for one scrypt unless the cache answers)."""
        admitted = self.admit(source=source, extension=extension, now=now, password=password)
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


# -- the login budget (Trio) -----------------------------------------------------------------------


class KdfBusy(Exception):
    """The login budget is spent: the login is refused without a password check (MCCP 503)."""


class KdfGate:
    """At most `concurrency` password checks at once in worker threads, at most `max_waiting` logins
    waiting for one of them, each for at most `max_wait` seconds (see the module docstring)."""

    def __init__(
        self,
        *,
        concurrency: int = KDF_CONCURRENCY,
        max_waiting: int = KDF_MAX_WAITING,
        max_wait: float = KDF_MAX_WAIT,
    ) -> None:
        if concurrency < 1 or max_waiting < 0 or max_wait < 0:
            raise ValueError("need concurrency >= 1, max_waiting >= 0 and max_wait >= 0")
        self.max_waiting = max_waiting
        self.max_wait = max_wait
        self._limiter = trio.CapacityLimiter(concurrency)
        self.waiting = 0
        self.refused = 0  # logins refused because the budget was spent

    @property
    def running(self) -> int:
        """Password checks running now."""
        return int(self._limiter.borrowed_tokens)

    async def run(self, verify: Callable[[str], bool], password: str) -> bool:
        """`verify(password)` in a worker thread once a slot is free; KdfBusy if none comes in time."""
        try:
            self._limiter.acquire_nowait()
            free = True
        except trio.WouldBlock:
            free = False
        if not free:
            await self._wait_for_slot()
        try:
            # Not abandoned on cancellation: the thread holds its slot until scrypt is done.
            return await trio.to_thread.run_sync(verify, password)
        finally:
            self._limiter.release()

    async def _wait_for_slot(self) -> None:
        if self.waiting >= self.max_waiting:
            self.refused += 1
            raise KdfBusy("too many logins waiting for a password check")
        acquired = False
        self.waiting += 1
        try:
            with trio.move_on_after(self.max_wait):
                await self._limiter.acquire()
                acquired = True  # no checkpoint between acquire() and here: the token is ours
        finally:
            self.waiting -= 1
        if not acquired:
            self.refused += 1
            raise KdfBusy(f"no password check slot within {self.max_wait:g}s")


async def authenticate(
    authenticator: Authenticator, gate: KdfGate, *, source: str, extension: str, password: str
) -> AuthResult:
    """One MCCP login from Trio: the cache and the throttle in this thread, scrypt through `gate`.

    The caller waits `result.delay` before answering (as for `check`).
    """
    admitted = authenticator.admit(
        source=source, extension=extension, now=trio.current_time(), password=password
    )
    if isinstance(admitted, AuthResult):
        return admitted
    try:
        ok = await gate.run(admitted.verify, password)
    except KdfBusy:
        return AuthResult(AuthOutcome.BUSY, extension, delay=admitted.delay)
    return authenticator.conclude(admitted, ok, now=trio.current_time())
