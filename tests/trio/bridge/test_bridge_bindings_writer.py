"""`bridge.bindings.run_bindings_writer`: bindings.json follows the registrar's changes (issue 3)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import trio
from bridge.bindings import BindingsFile, run_bindings_writer
from sip.registrar import ContactSpec, Registrar

A = "sip:101@127.0.0.1:5072"
B = "sip:102@127.0.0.1:5074"


async def _file_users(path: Path, expected: list[str]) -> None:
    with trio.fail_after(5):
        while True:
            if path.exists():
                records = json.loads(path.read_text())["bindings"]
                if [record["user"] for record in records] == expected:
                    return
            await trio.sleep(0.01)


async def test_saved_after_each_change_and_on_cancel(tmp_path: Path) -> None:
    path = tmp_path / "bindings.json"
    registrar = Registrar()
    store = BindingsFile(path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_bindings_writer, registrar, store)
            assert registrar.on_change is not None
            assert not path.exists()  # nothing changed yet: nothing written
            now = trio.current_time()
            registrar.register("101", [ContactSpec(A)], call_id="a", cseq=1, expires_header=60, now=now)
            await _file_users(path, ["101"])
            # Several changes in a row are coalesced; the file ends with all of them.
            registrar.register("102", [ContactSpec(B)], call_id="b", cseq=1, expires_header=60, now=now)
            registrar.register("101", [ContactSpec("*")], call_id="a", cseq=2, expires_header=0, now=now)
            await _file_users(path, ["102"])
            # A change just before the writer is cancelled is still saved.
            registrar.register("101", [ContactSpec(A)], call_id="a", cseq=3, expires_header=60, now=now)
            nursery.cancel_scope.cancel()
    assert registrar.on_change is None
    restarted = Registrar()
    assert BindingsFile(path).load(restarted, now=0.0, wall_now=time.time()) == 2
    assert restarted.lookup("101", 0.0) == [A]


async def test_a_failed_save_is_logged_and_the_writer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    registrar = Registrar()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_bindings_writer, registrar, BindingsFile(blocker / "bindings.json"))
            now = trio.current_time()
            registrar.register("101", [ContactSpec(A)], call_id="a", cseq=1, expires_header=60, now=now)
            await trio.sleep(0.2)
            registrar.register("101", [ContactSpec(A)], call_id="a", cseq=2, expires_header=60, now=now)
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot save the registrar's bindings" in m for m in messages) == 2
