"""The embedded registrar's bindings on disk: `<data_dir>/bindings.json` (issues 3 and 6).

Theory of operation
-------------------
The registrar (`sip.registrar.Registrar`, pure) keeps its bindings in memory on the monotonic clock.
This module is its file edge:

* **Survive a restart** (issue 3). The process that answers REGISTER (the single process, or worker 0
  of `--workers N`) loads the file at start (expired bindings dropped), then saves it after every
  REGISTER that changed something: `run_bindings_writer` is woken by the registrar's `on_change` and
  writes the whole table atomically (a temporary file in the same directory, fsync, `os.replace`), so a
  reader never sees half a file. Expiry is stored as wall-clock time (epoch seconds), because the
  monotonic clock of one process means nothing to another or after a reboot.
* **Share with the other workers** (issue 6). Workers 1..N-1 answer no REGISTER; before routing a
  call they `refresh` a read-only `Registrar` from the file, re-reading it only when its identity
  (inode, mtime, size) changed since the last read: a stat per call, a parse per change.
* A file that is not what we write (corrupt JSON, wrong shape) is logged once, and the registrar
  starts with no bindings (at start) or keeps what it had (on refresh); it is overwritten at the next
  change. A missing file is no bindings, silently.

Format: `{"version": 1, "bindings": [records of Registrar.export]}`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio
from sip.registrar import BindingsFormatError, Registrar

__all__ = ["BINDINGS_FILE_NAME", "BindingsFile", "run_bindings_writer"]

log = logging.getLogger("bridge.bindings")

BINDINGS_FILE_NAME = "bindings.json"
FORMAT_VERSION = 1

_Stamp = tuple[int, int, int]  # (inode, mtime ns, size): changes with every os.replace


class _Unreadable(Exception):
    """The file exists but is not a bindings file; `str()` says why."""


@dataclass(slots=True)
class BindingsFile:
    """`bindings.json`: load at start, `refresh` on change, `save` atomically."""

    path: Path
    _stamp: _Stamp | None = None
    _complained: _Stamp | None = field(default=None, repr=False)

    def _read(self) -> tuple[_Stamp, object] | None:
        """(stamp, records) of the file, None if missing; raises `_Unreadable`."""
        try:
            with self.path.open("rb") as file:
                info = os.fstat(file.fileno())
                raw = file.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _Unreadable(f"cannot read: {exc.strerror or exc}") from None
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Unreadable(f"not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
            raise _Unreadable(f"not a version {FORMAT_VERSION} bindings file")
        return stamp, document.get("bindings")

    def _current_stamp(self) -> _Stamp | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _complain(self, stamp: _Stamp | None, problem: str) -> None:
        if stamp is not None and stamp == self._complained:
            return  # logged once per version of the file
        self._complained = stamp
        log.warning("%s: %s; ignored (rewritten at the next REGISTER)", self.path, problem)

    def load(self, registrar: Registrar, *, now: float, wall_now: float) -> int:
        """At start: replace the registrar's bindings with the file's live ones; returns how many.

        A missing file gives none; an unreadable or malformed one gives none and one warning.
        """
        try:
            found = self._read()
            if found is None:
                registrar.load([], now, wall_now=wall_now)
                return 0
            stamp, records = found
            count = registrar.load(records, now, wall_now=wall_now)
        except (_Unreadable, BindingsFormatError) as exc:
            self._complain(self._current_stamp(), str(exc))
            registrar.load([], now, wall_now=wall_now)
            return 0
        self._stamp = stamp
        return count

    def changed(self) -> bool:
        """Whether the file is not the one last loaded (a stat, no read)."""
        return self._current_stamp() != self._stamp

    def refresh(self, registrar: Registrar, *, now: float, wall_now: float) -> bool:
        """Re-load the file into `registrar` if it changed since the last load; True if it did.

        A malformed file keeps the bindings the registrar had (one warning per version of the file);
        a file removed empties it.
        """
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        if stamp is None:
            registrar.load([], now, wall_now=wall_now)
            self._stamp = None
            return True
        try:
            found = self._read()
            if found is None:
                return False  # removed between the stat and the read: next time
            stamp, records = found
            registrar.load(records, now, wall_now=wall_now)
        except (_Unreadable, BindingsFormatError) as exc:
            self._complain(stamp, str(exc))
            return False
        self._stamp = stamp
        return True

    def save(self, registrar: Registrar, *, now: float, wall_now: float) -> None:
        """Write the registrar's live bindings atomically (temp file, fsync, rename); raises OSError."""
        self.write(registrar.export(now, wall_now=wall_now))

    def write(self, records: list[dict[str, object]]) -> None:
        """Write exported records atomically (temp file, fsync, rename); raises OSError."""
        document = {"version": FORMAT_VERSION, "bindings": records}
        data = json.dumps(document, indent=1).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".bindings-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self._stamp = self._current_stamp()


def wall_clock() -> float:
    """The wall clock (epoch seconds) that goes with `trio.current_time()` in the file."""
    return time.time()


async def run_bindings_writer(
    registrar: Registrar,
    store: BindingsFile,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Save `store` after every change of `registrar` (its `on_change`), until cancelled.

    Changes that come while a save runs are coalesced into one more save. A failed save is logged
    and retried at the next change. On cancellation a pending change is still saved (bounded).
    """
    wakeup = trio.Event()
    pending = False

    def on_change() -> None:
        nonlocal pending
        pending = True
        wakeup.set()

    async def save() -> None:
        nonlocal pending
        pending = False
        try:
            # Exported here, in the Trio thread; only the file I/O goes to a worker thread.
            records = registrar.export(trio.current_time(), wall_now=wall_clock())
            await trio.to_thread.run_sync(store.write, records)
        except OSError as exc:
            log.error("cannot save the registrar's bindings to %s: %s", store.path, exc)
        except BaseException:  # cancelled before the write was done: still to do, in `finally`
            pending = True
            raise

    registrar.on_change = on_change
    task_status.started()
    try:
        while True:
            await wakeup.wait()
            wakeup = trio.Event()
            await save()
    finally:
        registrar.on_change = None
        if pending:
            with trio.move_on_after(2.0, shield=True):
                await save()
