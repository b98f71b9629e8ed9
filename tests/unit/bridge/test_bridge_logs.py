"""bridge.logs: a log that cannot be written is counted and reported once, never raised."""

from __future__ import annotations

import dataclasses
import io
import logging
from pathlib import Path

import pytest

from bridge.config import Config
from bridge.logs import dropped_records, setup_logging


class FlakyStream(io.StringIO):
    """A stream whose flush fails while `full` is set, like a file on a full disk."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def flush(self) -> None:
        if self.full:
            self.truncate(0)  # what the kernel refused is gone
            raise OSError(28, "No space left on device")
        super().flush()


@pytest.fixture(autouse=True)
def _restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_stderr_that_cannot_be_written_counts_drops_and_recovers(tmp_path: Path) -> None:
    stream = FlakyStream()
    setup_logging(Config(data_dir=tmp_path), stream)
    log = logging.getLogger("bridge.test")
    log.info("one")
    assert "one" in stream.getvalue()
    stream.full = True
    for i in range(5):
        log.warning("lost %d", i)  # must not raise, must not print a traceback per record
    assert dropped_records() == 5
    stream.full = False
    stream.seek(0)
    stream.truncate(0)
    log.info("back")
    text = stream.getvalue()
    assert "back" in text
    assert "5 records were dropped while flaky could not be written" in text
    log.info("again")
    assert stream.getvalue().count("records were dropped") == 1


def test_log_file_on_a_full_disk_is_reported_once_on_stderr(tmp_path: Path) -> None:
    stderr = io.StringIO()
    config = dataclasses.replace(Config(data_dir=tmp_path), log_file=Path("/dev/full"))
    setup_logging(config, stderr)
    log = logging.getLogger("bridge.test")
    for i in range(20):
        log.info("record %d", i)
    assert dropped_records() == 20
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 1
    assert "cannot write the log to /dev/full" in lines[0]
    assert "No space left on device" in lines[0]


def test_log_file_receives_records_with_the_worker_label(tmp_path: Path) -> None:
    path = tmp_path / "bridge.log"
    config = dataclasses.replace(Config(data_dir=tmp_path), log_file=path)
    handler = setup_logging(config, io.StringIO(), "worker 2/2")
    logging.getLogger("bridge.test").info("hello %s", "file")
    handler.flush()
    text = path.read_text()
    assert "[worker 2/2] bridge.test: hello file" in text
    assert dropped_records() == 0


def test_a_log_file_that_cannot_be_opened_fails_at_setup(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(data_dir=tmp_path), log_file=tmp_path / "missing" / "bridge.log")
    with pytest.raises(OSError):
        setup_logging(config, io.StringIO())


def test_log_file_setting_from_env_and_empty_means_stderr(tmp_path: Path) -> None:
    from bridge.config import load_config

    config = load_config(env={"MCCP_BRIDGE_LOG_FILE": "~/bridge.log"}, home=tmp_path)
    assert config.log_file == Path("~/bridge.log").expanduser()
    assert load_config(env={"MCCP_BRIDGE_LOG_FILE": ""}, home=tmp_path).log_file is None
    assert load_config(home=tmp_path).log_file is None


def test_log_directory_gone_at_reopen_is_counted_not_raised(tmp_path: Path) -> None:
    """WatchedFileHandler reopens a moved log outside logging's error handling: the directory moved
    away (or no descriptor left, or a full disk at the rotation's flush) used to raise into the
    caller of `log.info`. Now: counted, reported once, and written again when it comes back."""
    report = io.StringIO()
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    config = dataclasses.replace(Config(data_dir=tmp_path), log_file=log_dir / "bridge.log")
    setup_logging(config, report)
    log = logging.getLogger("bridge.test")
    log.info("one")
    log_dir.rename(tmp_path / "logs-old")
    for i in range(3):
        log.warning("lost %d", i)  # must not raise
    assert dropped_records() == 3
    assert report.getvalue().count("cannot write the log to") == 1
    log_dir.mkdir()
    log.info("back")
    text = (log_dir / "bridge.log").read_text()
    assert "back" in text
    assert "3 records were dropped" in text
    assert "one" in (tmp_path / "logs-old" / "bridge.log").read_text()
