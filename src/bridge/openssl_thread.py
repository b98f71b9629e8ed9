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
loop waited for the same work before; a hand-over costs ~15-100 us, about five times per call:
the SSL object's creation, the handshake's datagrams, the release; never per media packet).
Work that calls back in runs inline.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["OpenSslThread"]

_T = TypeVar("_T")
_Job = tuple[Callable[[], Any], list[Any], threading.Lock]


class OpenSslThread:
    """One thread that runs OpenSSL work for the event loop's thread; `close()` ends it.

    A hand-over is a queue put and a lock: ~13 us on this machine, against ~35 us through a
    `concurrent.futures` executor.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="openssl", daemon=True)
        self._thread.start()
        self._closed = False

    def __call__(self, work: Callable[[], _T], /) -> _T:
        if self._closed or threading.current_thread() is self._thread:
            return work()
        outcome: list[Any] = []
        done = threading.Lock()
        done.acquire()
        self._jobs.put((work, outcome, done))
        done.acquire()  # released by the thread once `outcome` holds the result or the exception
        if len(outcome) == 2:
            raise outcome[1]
        result: _T = outcome[0]
        return result

    def close(self) -> None:
        """End the thread (it is idle: every call waits for its work); later work runs inline."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
            self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, outcome, done = job
            try:
                outcome.append(work())
            except BaseException as exc:  # handed to the caller, raised there
                outcome[:] = [None, exc]
            finally:
                done.release()
