"""Brute-force protection for the embedded registrar's digest checks. No I/O, no clock.

Digest authentication (RFC 3261 §22.4, RFC 7616) does nothing against online guessing: a
registrar answers a wrong digest in microseconds, hundreds of guesses a second, and here the SIP
password of an extension is also its MCCP password. `SipUA` therefore asks an
`AuthGuard` before it checks a REGISTER's credentials and tells it about every failed check:

* `is_locked(source=ip, extension=user, now=)`: True -> the UA answers 403 at once, computes no
  digest, and counts the refusal (`SipUA.stats["register_locked_out"]`).
* `record_failure(source=ip, extension=user, now=)`: a wrong digest (or an unknown user, a realm
  or username that does not match: every 403 of the check). The UA logs the lock-out it starts,
  once (`SipUA.stats["register_lockouts"]`).

The protocol has the shape of `bridge.auth.Authenticator` (`is_locked`, `record_failure`, the
same keywords), so the bridge can hand the UA its MCCP authenticator and share one lock-out
state between the page and SIP. The default is `DigestThrottle`: failures are counted per
source IP and per user in a sliding window of `window` seconds; `source_failures` from one IP
lock that IP out, `user_failures` for one user (from any number of IPs: distributed guessing)
lock that user out, each for `lockout` seconds. The per-user figure is the larger one, so one
guessing address locks itself out long before it can lock the real owner out. Memory is bounded
(`max_tracked` records per kind; expired records go first).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["AuthGuard", "DigestThrottle", "ThrottleFigures"]


class AuthGuard(Protocol):
    """What `SipUA` asks before and tells after a digest check (see the module docstring)."""

    def is_locked(self, *, source: str, extension: str, now: float) -> bool:
        """Whether `source` (an IP address) or `extension` (the user) is locked out at `now`."""
        ...

    def record_failure(self, *, source: str, extension: str, now: float) -> object:
        """Count one failed check; the result is not used."""
        ...


@dataclass(frozen=True, slots=True)
class ThrottleFigures:
    """The default guard's figures (see the module docstring)."""

    source_failures: int = 10
    user_failures: int = 50
    window: float = 300.0
    lockout: float = 900.0
    max_tracked: int = 10_000

    def __post_init__(self) -> None:
        if self.source_failures < 1 or self.user_failures < 1:
            raise ValueError("failure thresholds must be at least 1")
        if self.window <= 0 or self.lockout <= 0 or self.max_tracked < 1:
            raise ValueError("window, lockout and max_tracked must be positive")


@dataclass(slots=True)
class _Record:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = float("-inf")


class DigestThrottle:
    """The default `AuthGuard`: per-source and per-user failure counts, lock-out on a threshold."""

    def __init__(self, figures: ThrottleFigures | None = None) -> None:
        self.figures = figures or ThrottleFigures()
        self._sources: dict[str, _Record] = {}
        self._users: dict[str, _Record] = {}

    def is_locked(self, *, source: str, extension: str, now: float) -> bool:
        """Whether `source` or `extension` is locked out at `now`."""
        return any(
            record is not None and record.locked_until > now
            for record in (self._sources.get(source), self._users.get(extension))
        )

    def record_failure(self, *, source: str, extension: str, now: float) -> tuple[str, ...]:
        """Count a failure; returns the lock-outs it started (e.g. `("source 192.0.2.1",)`)."""
        started = []
        f = self.figures
        for kind, key, table, threshold in (
            ("source", source, self._sources, f.source_failures),
            ("user", extension, self._users, f.user_failures),
        ):
            if not key:
                continue
            record = self._record(table, key, now)
            if record.locked_until > now:
                continue  # already locked (a check admitted before the lock-out began)
            record.failures.append(now)
            if len(record.failures) >= threshold:
                record.failures.clear()
                record.locked_until = now + f.lockout
                started.append(f"{kind} {key}")
        return tuple(started)

    def tracked(self) -> int:
        """How many records are held (for tests of the memory bound)."""
        return len(self._sources) + len(self._users)

    def _record(self, table: dict[str, _Record], key: str, now: float) -> _Record:
        record = table.get(key)
        if record is None:
            if len(table) >= self.figures.max_tracked:
                self._prune(table, now)
            record = table[key] = _Record()
        horizon = now - self.figures.window
        while record.failures and record.failures[0] <= horizon:
            record.failures.popleft()
        return record

    def _prune(self, table: dict[str, _Record], now: float) -> None:
        horizon = now - self.figures.window
        for key in [
            k
            for k, r in table.items()
            if r.locked_until <= now and (not r.failures or r.failures[-1] <= horizon)
        ]:
            del table[key]
        # Still full of live records (a flood from many addresses): drop the oldest unlocked ones.
        excess = len(table) - self.figures.max_tracked + 1
        if excess > 0:
            for key in [k for k, r in table.items() if r.locked_until <= now][:excess]:
                del table[key]
            excess = len(table) - self.figures.max_tracked + 1
            for key in list(table)[: max(excess, 0)]:
                del table[key]
