"""Where the bridge's log goes, and what happens when it cannot be written.

`setup_logging(config, stream, label)` sends every record to `config.log_file` (appended; reopened when
logrotate moves it, `logging.handlers.WatchedFileHandler`) or, when that setting is empty, to `stream`
(stderr). Workers of `--workers N` write to the same file, one line per record, each line tagged with the
worker's label.

A log that cannot be written (disk full, a file system gone read-only, stderr closed, the log's directory
removed, no file descriptor left to reopen it after a rotation) must never stop a call or the bridge. The
handler here swallows the write error, counts the record in `dropped`, and says so once: one line on
stderr (or, when stderr is the log itself, nowhere but the counter, `dropped_records()`, meant for
`/metrics`). When writing works again, the first record written is followed by one line telling how
many records were lost.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from bridge.config import Config

__all__ = ["LOG_FORMAT", "WORKER_LOG_FORMAT", "LogWriteGuard", "dropped_records", "setup_logging"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s [{label}] %(name)s: %(message)s"


class LogWriteGuard:
    """The failure state of one log destination: counts dropped records, reports the first failure once
    (to `report`, unless that is the log itself) and the recovery once."""

    def __init__(self, destination: str, report: TextIO | None) -> None:
        self.destination = destination
        self.report = report
        self.dropped = 0
        self.failing = False

    def failed(self, exc: BaseException | None) -> None:
        self.dropped += 1
        if self.failing:
            return
        self.failing = True
        if self.report is None:
            return
        try:
            self.report.write(
                f"mccp-bridge: cannot write the log to {self.destination}: {exc}; "
                "dropping log records until writing works again\n"
            )
            self.report.flush()
        except (OSError, ValueError):
            pass  # the report channel is broken too: the counter is all that is left

    def recovered(self) -> str | None:
        """The line to write first once a record could be written again, or None if nothing was lost."""
        if not self.failing:
            return None
        self.failing = False
        return f"log: {self.dropped} records were dropped while {self.destination} could not be written"


class _GuardedMixin:
    """`emit` through the guard: a failing write is counted, never raised nor printed per record."""

    guard: LogWriteGuard

    def handleError(self, record: logging.LogRecord) -> None:
        self.guard.failed(sys.exc_info()[1])


class _GuardedStreamHandler(_GuardedMixin, logging.StreamHandler[TextIO]):
    def emit(self, record: logging.LogRecord) -> None:
        _emit_guarded(self, super().emit, record)


class _GuardedFileHandler(_GuardedMixin, logging.handlers.WatchedFileHandler):
    def emit(self, record: logging.LogRecord) -> None:
        _emit_guarded(self, super().emit, record)


def _emit_guarded(
    handler: _GuardedMixin, emit: Callable[[logging.LogRecord], None], record: logging.LogRecord
) -> None:
    guard = handler.guard
    was_failing = guard.failing
    dropped_before = guard.dropped
    _emit_or_count(handler, emit, record)
    if was_failing and guard.dropped == dropped_before:  # this record went through: say what was lost
        note = guard.recovered()
        if note is not None:
            fields = {"name": "bridge.logs", "levelno": logging.WARNING, "levelname": "WARNING", "msg": note}
            _emit_or_count(handler, emit, logging.makeLogRecord(fields))


def _emit_or_count(
    handler: _GuardedMixin, emit: Callable[[logging.LogRecord], None], record: logging.LogRecord
) -> None:
    """`emit`, with what the stdlib lets escape counted as a dropped record: WatchedFileHandler
    reopens a moved log (flush, close, open) outside its own error handling, so a log directory
    gone, a full disk holding unflushed bytes at rotation, or no descriptor left (EMFILE) used to
    raise into the code that logged."""
    try:
        emit(record)
    except Exception:
        handler.handleError(record)


_guards: list[LogWriteGuard] = []


def dropped_records() -> int:
    """Log records dropped by this process because the log could not be written (for /metrics)."""
    return sum(guard.dropped for guard in _guards)


def setup_logging(config: Config, stream: TextIO, label: str | None = None) -> logging.Handler:
    """Replace the root logger's handlers with one guarded handler (file or `stream`); returns it."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    handler: _GuardedStreamHandler | _GuardedFileHandler
    if config.log_file is not None:
        path = Path(config.log_file)
        handler = _GuardedFileHandler(path, encoding="utf-8")  # opened now: a bad path fails the start
        handler.guard = LogWriteGuard(str(path), stream)
    else:
        handler = _GuardedStreamHandler(stream)
        handler.guard = LogWriteGuard(getattr(stream, "name", "stderr"), None)
    _guards[:] = [handler.guard]
    handler.setFormatter(
        logging.Formatter(LOG_FORMAT if label is None else WORKER_LOG_FORMAT.format(label=label))
    )
    root.addHandler(handler)
    root.setLevel(config.log_level.value.upper())
    # trio-websocket logs every frame at DEBUG; keep it at INFO unless asked through its own logger.
    logging.getLogger("trio-websocket").setLevel(max(root.level, logging.INFO))
    return handler
