"""bench.memory must not rot: a few seconds of it, checked for a well-formed result.

Memory, not time, is compared: the DTLS endpoint released after its grace period must keep a
small fraction of what a connected one holds (OpenSSL's ~75 KiB; rtp.dtls module docstring).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
COMPONENTS = ("dtls", "dtls_released", "srtp", "ice", "relay", "sip", "trio_tasks")

pytestmark = pytest.mark.timeout(120)


def test_memory_per_component(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    only = ",".join(COMPONENTS)
    subprocess.run(
        [sys.executable, "-m", "bench.memory", "--n", "30", "--only", only, "--out", str(out)],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=100,
    )
    record = json.loads(out.read_text())
    assert record["n"] == 30
    assert set(record["components"]) == set(COMPONENTS)
    for figures in record["components"].values():
        assert set(figures) == {"rss_kib", "traced_kib"}
        assert figures["traced_kib"] > 0
    dtls, released = record["components"]["dtls"], record["components"]["dtls_released"]
    assert dtls["rss_kib"] > 20  # the SSL.Connection after a handshake (about 75 KiB)
    assert released["rss_kib"] < dtls["rss_kib"] / 4
