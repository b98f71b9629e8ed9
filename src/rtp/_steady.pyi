"""Type stub of the C extension rtp._steady (src/rtp/_steady.c): the steady media stream in C."""

from collections.abc import Callable
from typing import Any

from rtp.reception import SourceState
from rtp.relay import LegIncrements, RewriteState, RouteTable

class SteadyRelay:
    def __init__(
        self,
        browser_fd: int,
        sip_fd: int,
        buffer: bytearray,
        browser_punt: Callable[[int, float], object],
        sip_punt: Callable[[int, float], object],
        browser_dest: tuple[str, int] | None = None,
    ) -> None: ...
    def browser(self, now: float, /) -> bool: ...
    def browser_in(self, n: int, now: float, /) -> bool: ...
    def sip(self, now: float, /) -> bool: ...
    def arm(
        self,
        srtp: tuple[int, int, int, int] | tuple[int, int, int, int, object],
        to_sip: RouteTable,
        to_browser: RouteTable,
        rewrite: tuple[int, float, bool, int, int, int, int, int, int, int, float | None],
        rec_to_sip: SourceState | None,
        rec_to_browser: SourceState | None,
    ) -> None: ...
    def collect(
        self,
    ) -> (
        tuple[
            RewriteState,
            SourceState | None,
            SourceState | None,
            LegIncrements,
            LegIncrements,
            tuple[int, float | None, int],
        ]
        | None
    ): ...
    def disarm(self) -> None: ...
    @property
    def armed(self) -> bool: ...
    @property
    def punts(self) -> int: ...

class Dispatcher:
    def __init__(self, epoll_fd: int, max_events: int, drain_cap: int) -> None: ...
    def add(self, fd: int, handler: Callable[[float], object], /) -> None: ...
    def replace(self, fd: int, handler: Callable[[float], object], /) -> None: ...
    def remove(self, fd: int, /) -> None: ...
    def close(self) -> None: ...
    def arm(self, delay: float, /) -> None: ...
    @property
    def timer_fd(self) -> int: ...
    def serve(self, now: float, failures: list[tuple[int, Any, Exception]], /) -> int: ...
    def __len__(self) -> int: ...
