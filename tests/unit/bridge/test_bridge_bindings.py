"""`bridge.bindings.BindingsFile`: bindings.json round trip, expiry across restarts, corrupt files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from bridge.bindings import BindingsFile
from sip.registrar import ContactSpec, Registrar

A = "sip:101@127.0.0.1:5072"
WALL = 1_700_000_000.0


def _registered(now: float = 50.0) -> Registrar:
    r = Registrar()
    r.register("101", [ContactSpec(A, expires=60)], call_id="c1", cseq=7, expires_header=None, now=now,
               source=("127.0.0.1", 5072, "udp"))  # fmt: skip
    return r


def test_round_trip_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "bindings.json"
    BindingsFile(path).save(_registered(now=50.0), now=50.0, wall_now=WALL)
    assert json.loads(path.read_text())["version"] == 1
    assert not list(tmp_path.glob(".bindings-*"))  # the temporary file was renamed
    # "Restart": a new process, another monotonic clock, 20 s later on the wall clock.
    restarted = Registrar()
    assert BindingsFile(path).load(restarted, now=3.0, wall_now=WALL + 20) == 1
    (binding,) = restarted.bindings("101", 3.0)
    assert (binding.contact, binding.cseq, binding.source) == (A, 7, ("127.0.0.1", 5072, "udp"))
    assert binding.expires_in(3.0) == 40


def test_expired_bindings_are_dropped_at_load(tmp_path: Path) -> None:
    path = tmp_path / "bindings.json"
    BindingsFile(path).save(_registered(), now=50.0, wall_now=WALL)
    restarted = Registrar()
    assert BindingsFile(path).load(restarted, now=0.0, wall_now=WALL + 60) == 0
    assert restarted.lookup("101", 0.0) == []


def test_missing_file_is_no_bindings_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert BindingsFile(tmp_path / "bindings.json").load(_registered(), now=50.0, wall_now=WALL) == 0
    assert not caplog.records


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b'{"version": 2, "bindings": []}',
        b'{"version": 1, "bindings": [{"user": 1}]}',
    ],
    ids=["json", "utf8", "version", "record"],
)
def test_corrupt_file_starts_with_none_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "bindings.json"
    path.write_bytes(content)
    store = BindingsFile(path)
    registrar = _registered()
    with caplog.at_level(logging.WARNING, logger="bridge.bindings"):
        assert store.load(registrar, now=50.0, wall_now=WALL) == 0
        assert registrar.lookup("101", 50.0) == []
        assert not store.refresh(registrar, now=51.0, wall_now=WALL + 1)  # same bad file: not again
    (record,) = caplog.records
    assert str(path) in record.getMessage()
    assert "\n" not in record.getMessage()
    # The next change overwrites it with a good file.
    store.save(_registered(), now=50.0, wall_now=WALL)
    assert BindingsFile(path).load(Registrar(), now=50.0, wall_now=WALL) == 1


def test_refresh_reads_only_when_the_file_changed(tmp_path: Path) -> None:
    path = tmp_path / "bindings.json"
    writer, reader = BindingsFile(path), BindingsFile(path)
    routing = Registrar()
    assert reader.refresh(routing, now=0.0, wall_now=WALL) is False  # no file, nothing loaded before
    writer.save(_registered(), now=50.0, wall_now=WALL)
    assert reader.changed()
    assert reader.refresh(routing, now=0.0, wall_now=WALL) is True
    assert routing.lookup("101", 0.0) == [A]
    assert not reader.changed()
    assert reader.refresh(routing, now=1.0, wall_now=WALL + 1) is False
    # The phone unregisters: the file is replaced (another inode), the reader sees it.
    empty = _registered()
    empty.register("101", [ContactSpec("*")], call_id="c1", cseq=8, expires_header=0, now=51.0)
    writer.save(empty, now=51.0, wall_now=WALL + 1)
    assert reader.refresh(routing, now=2.0, wall_now=WALL + 2) is True
    assert routing.lookup("101", 2.0) == []
    # A corrupt replacement keeps what the reader had, and is reported.
    writer.save(_registered(), now=50.0, wall_now=WALL)
    reader.refresh(routing, now=2.0, wall_now=WALL)
    path.write_text("garbage")
    os.utime(path, ns=(0, 1))
    assert reader.refresh(routing, now=3.0, wall_now=WALL + 3) is False
    assert routing.lookup("101", 3.0) == [A]
    path.unlink()
    assert reader.refresh(routing, now=3.0, wall_now=WALL + 3) is True
    assert routing.lookup("101", 3.0) == []
