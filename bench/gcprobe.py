"""Run `mccp-bridge` with Python's garbage collector observed (a local experiment, not a product
change): `python -m bench.gcprobe serve ...` is `mccp-bridge serve ...` plus gc.callbacks timing
every collection; at exit the pauses are written as JSON to $BENCH_GC_LOG.

$BENCH_PATCH: a Python file executed first (a monkeypatch under test, e.g. a faster reader loop).
$BENCH_GC_MODE: `probe` (default: measure only), `freeze` (gc.freeze() after start-up, then
gen0 threshold 50 000 instead of 700: what the lead could apply in bridge.cli), or `off`
(gc.disable(): the upper bound of the gain).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

_start: dict[str, float] = {}
_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_collected: list[int] = []


def _callback(phase: str, info: dict[str, Any]) -> None:
    gen = int(info.get("generation", 0))
    if phase == "start":
        _start["t"] = time.perf_counter()
    elif "t" in _start:
        _pauses[gen].append(time.perf_counter() - _start.pop("t"))
        _collected.append(int(info.get("collected", 0)))


def _report() -> None:
    path = os.environ.get("BENCH_GC_LOG")
    if not path:
        return
    out: dict[str, Any] = {"mode": os.environ.get("BENCH_GC_MODE", "probe"), "gens": {}}
    for gen, values in _pauses.items():
        values = sorted(values)
        out["gens"][gen] = {
            "count": len(values),
            "total_ms": round(1000 * sum(values), 1),
            "max_ms": round(1000 * values[-1], 2) if values else 0.0,
            "p50_ms": round(1000 * values[len(values) // 2], 3) if values else 0.0,
        }
    out["objects_at_exit"] = len(gc.get_objects())
    with open(path, "w") as f:
        json.dump(out, f)


def main() -> None:
    mode = os.environ.get("BENCH_GC_MODE", "probe")
    gc.callbacks.append(_callback)
    atexit.register(_report)
    if mode == "off":
        gc.disable()
    elif mode == "freeze":
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
    patch = os.environ.get("BENCH_PATCH")
    if patch:  # a local experiment: a Python file run before the bridge starts (monkeypatches)
        exec(compile(Path(patch).read_text(), patch, "exec"), {"__name__": "bench_patch"})
    from bridge.cli import main as bridge_main

    sys.argv[0] = "mccp-bridge"
    sys.exit(bridge_main())


if __name__ == "__main__":
    main()
