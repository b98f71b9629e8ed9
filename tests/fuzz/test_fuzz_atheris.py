"""Each fuzz target under atheris (coverage-guided) for a few seconds, in its own subprocess.

atheris instruments bytecode process-wide and libFuzzer owns the process (it exits on a crash), so
every target runs as `python -m fuzz._runner <target>`, with the repository's corpus as read-only
seeds and a temporary directory for new units and crash artifacts. The budget is FUZZ_SECONDS per
target (8 targets: about 40 s in all); the libFuzzer seed is fixed, so a failure reproduces with
the same command. Longer runs by hand: see docs/security.md, "Fuzzing".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz._runner import TARGETS

ROOT = Path(__file__).parents[2]
FUZZ_SECONDS = int(os.environ.get("MCCP_FUZZ_SECONDS", "3"))
MIN_RUNS = 30  # the slowest target (TCP framing, chunked) does 75-100 runs/s on a busy core


@pytest.mark.timeout(FUZZ_SECONDS + 40)
@pytest.mark.parametrize("target", TARGETS)
def test_target_survives_atheris(target: str, tmp_path: Path) -> None:
    new_units = tmp_path / "units"
    new_units.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "fuzz._runner",
        target,
        f"-max_total_time={FUZZ_SECONDS}",
        "-seed=20261126",
        "-rss_limit_mb=1536",
        "-timeout=10",
        "-max_len=4096",
        f"-artifact_prefix={tmp_path}/",
        str(new_units),
        str(ROOT / "fuzz" / "corpus" / target),
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=FUZZ_SECONDS + 30, check=False
    )
    log = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert not crashes, f"{target}: {crashes}\n{log[-4000:]}"
    assert proc.returncode == 0, f"{target}: rc {proc.returncode}\n{log[-4000:]}"
    done = re.search(r"Done (\d+) runs in (\d+) second", log)
    assert done is not None, log[-2000:]
    runs = int(done.group(1))
    print(f"{target}: {runs} executions in {done.group(2)} s")
    assert runs >= MIN_RUNS, f"{target}: only {runs} executions"
