"""A thread of its own for the DTLS handshakes' OpenSSL work (memory per call, issue 6).

glibc's malloc serves each thread from an arena, the main thread from the main heap. A DTLS
endpoint holds ~75 KiB of OpenSSL state from its first datagram to its release 2 s after the
handshake (`rtp.dtls`, RELEASE_AFTER). Made in the main thread, that state sits between the
long-lived allocations of every call set up in those 2 s (their TLS connections, SRTP contexts,
Python's larger objects); once released it leaves holes that `malloc_trim` cannot give back, as
they share pages with live chunks: ~20 KiB per call after a burst of set-ups (bench.memory
`call`, 200 calls: 118-124 -> 98.5 KiB per call). Made in this thread, it lives in this thread's
arena, which holds little else and empties at each release (`BridgeContext.trim_heap` trims
every arena).

`OpenSslThread` is an `rtp.dtls.OpenSslRunner`: `run(work)` runs `work()` in the thread and
waits for it, so an endpoint's behaviour and the event loop's view of it are unchanged (the
loop waited for the same work before; the hand-over costs ~50 us, a few times per call set-up
and once at the release, never per media packet). Work that calls back in runs inline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["OpenSslThread"]

_T = TypeVar("_T")


class OpenSslThread:
    """One worker thread that runs OpenSSL work for the event loop's thread; `close()` ends it."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openssl")
        self._ident = self._executor.submit(threading.get_ident).result()
        self._closed = False

    def __call__(self, work: Callable[[], _T], /) -> _T:
        if self._closed or threading.get_ident() == self._ident:
            return work()
        return self._executor.submit(work).result()

    def close(self) -> None:
        """Let the thread end (it is idle: every call waits for its work); later work runs inline."""
        self._closed = True
        self._executor.shutdown(wait=True)
