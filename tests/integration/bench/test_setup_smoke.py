"""bench.setup must not rot: a few calls of each kind of caller, checked for a well-formed record.

No timing is asserted (benchmarks never become timed assertions): every call is set up through
the real signalling (MCCP, scrypt or the credentials cache, SIP, ICE, DTLS, one relayed packet).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.extensions import SCRYPT_IMPLEMENTATION

REPO = Path(__file__).resolve().parents[3]
MILESTONES = ("connect_ms", "invite_ms", "answered_ms", "dtls_ms", "media_ms")


@pytest.mark.timeout(90)
def test_setup_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "setup.json"
    cmd = [sys.executable, "-m", "bench.setup", "--serial", "3", "--rates", "4", "--seconds", "1"]
    cmd += ["--scrypt-n", "1024", "--callers", "warm,cold", "--nice", "0", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=80, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["kind"] == "setup"
    assert record["scrypt_implementation"] == SCRYPT_IMPLEMENTATION
    assert [(b["scrypt_n"], b["callers"]) for b in record["bridges"]] == [(1024, "warm"), (1024, "cold")]
    for bridge in record["bridges"]:
        serial = bridge["serial"]
        assert (serial["attempted"], serial["failed"]) == (3, 0)
        assert all(serial[name]["p50"] is not None for name in MILESTONES)
        assert serial["bridge_cpu_ms_per_call"] > 0
        [step] = bridge["open_loop"]
        assert (step["offered_cps"], step["attempted"], step["failed"]) == (4.0, 4, 0)
