"""A small in-memory datagram network for sans-IO pair tests (after the idea of trio's FakeNet).

Nothing here touches sockets or clocks: senders pass `now`, the net computes a delivery time
per datagram from a seeded RNG, and the test's loop advances `now` to the earliest of the net's
next delivery and the endpoints' deadlines. A `route` hook (or the loss / duplicate / reorder
knobs) decides each datagram's fate, so lossy, duplicating and reordering links are
reproducible from a seed.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Datagram:
    """One datagram in flight from `src` to `dst` (endpoint names chosen by the test)."""

    src: str
    dst: str
    data: bytes


# A route hook gets the datagram and the net; it returns the delays after which copies of it
# arrive: [] drops it, [d] delivers once, [d1, d2] duplicates it.
Route = Callable[[Datagram, "FakeNet"], list[float]]


@dataclass(slots=True)
class NetStats:
    """What happened on the net."""

    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    delivered: int = 0


@dataclass
class FakeNet:
    """A lossy, duplicating, reordering datagram net driven by a caller-supplied `now`."""

    seed: int = 0
    latency: float = 0.010
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    route: Route | None = None
    stats: NetStats = field(default_factory=NetStats)
    rng: random.Random = field(init=False)
    _queue: list[tuple[float, int, Datagram]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def default_route(self, dgram: Datagram) -> list[float]:
        """Loss, duplication and jitter (reordering) from the knobs."""
        if self.rng.random() < self.loss:
            return []
        copies = 2 if self.rng.random() < self.duplicate else 1
        return [self.latency + self.rng.random() * self.jitter for _ in range(copies)]

    def send(self, now: float, src: str, dst: str, data: bytes) -> None:
        """Put a datagram on the wire at time `now`."""
        dgram = Datagram(src, dst, bytes(data))
        self.stats.sent += 1
        delays = self.route(dgram, self) if self.route is not None else self.default_route(dgram)
        if not delays:
            self.stats.dropped += 1
        self.stats.duplicated += max(0, len(delays) - 1)
        for delay in delays:
            heapq.heappush(self._queue, (now + delay, next(self._order), dgram))

    def next_delivery(self) -> float | None:
        """When the next datagram arrives, or None if nothing is in flight."""
        return self._queue[0][0] if self._queue else None

    def deliver_due(self, now: float) -> list[Datagram]:
        """Datagrams whose arrival time is <= now, in arrival order."""
        out = []
        while self._queue and self._queue[0][0] <= now:
            out.append(heapq.heappop(self._queue)[2])
        self.stats.delivered += len(out)
        return out
