"""The soak harness must not rot: a few calls held a few seconds, a well-formed record, nothing left.

No timing is asserted: only that the calls were set up through the real signalling, that media
flowed both ways in every interval, that every call was hung up (BYE for every INVITE) and that the
bridge went back to its baseline (no active call in any worker, descriptors and media ports back).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DIRECTIONS = ("browser_to_phone", "phone_to_browser")


@pytest.mark.timeout(60)
def test_soak_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    cmd = [sys.executable, "-m", "bench.soak", "--calls", "5", "--seconds", "3", "--interval", "1"]
    cmd += ["--settle", "0.5", "--nice", "0", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=55)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert record["kind"] == "soak"
    assert record["setup"]["calls"] == 5
    assert record["setup"]["failed"] == 0
    assert record["dropped"] == []
    assert len(record["samples"]) == 3
    for sample in record["samples"]:
        assert sample["calls_alive"] == 5
        assert sample["rss_kib"] > 0
        assert sample["fds"] > 0
        assert sample["auth_failures"] == 0
        for direction in DIRECTIONS:
            assert sample[f"{direction}_sent"] > 0
            assert sample[f"{direction}_received"] > 0, (direction, sample)
    teardown = record["teardown"]
    assert teardown["clean"], teardown
    assert teardown["active_calls"]
    assert not any(teardown["active_calls"])
    assert teardown["fds"] <= record["baseline"]["fds"]
    assert teardown["media_ports_bound"] == record["baseline"]["media_ports_bound"]
    assert teardown["invites"] == 5
    assert teardown["legs_without_bye"] == 0
    summary = record["summary"]
    assert summary["calls_set_up"] == 5
    assert summary["calls_dropped"] == 0
    assert summary["teardown_clean"] is True
    for key in ("rss_kib_slope_per_minute", "fds_slope_per_minute"):
        assert isinstance(summary[key], float)
