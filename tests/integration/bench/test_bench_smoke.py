"""The benchmark harness must not rot: a few seconds of it, checked for a well-formed record.

No timing is asserted (benchmarks never become timed assertions): only that calls were set up
through the real signalling without failures and that packets flowed both ways through each relay.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from bench.srtp_kdf import session_keys

from rtp.srtp import SrtpProfile, SrtpTx

REPO = Path(__file__).resolve().parents[3]
DIRECTIONS = ("browser_to_phone", "phone_to_browser")


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_session_keys_match_libsrtp(profile: SrtpProfile) -> None:
    """The blaster's SRTP (session keys from bench.srtp_kdf) is libsrtp's: same ciphertext."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    master = bytes(range(profile.key_length + profile.salt_length))
    header = struct.pack("!BBHII", 0x80, 0, 777, 777 * 160, 0x12345678)
    payload = bytes(range(160))
    expected = SrtpTx(profile, master).protect(header + payload)
    keys = session_keys(profile, master)
    if keys.gcm:
        iv = bytes(
            a ^ b for a, b in zip(bytes(2) + struct.pack("!IIH", 0x12345678, 0, 777), keys.salt, strict=True)
        )
        assert expected[12:] == AESGCM(keys.key).encrypt(iv, payload, header)
    else:
        iv_int = (int.from_bytes(keys.salt, "big") << 16) ^ (0x12345678 << 64) ^ (777 << 16)
        encryptor = Cipher(algorithms.AES(keys.key), modes.CTR(iv_int.to_bytes(16, "big"))).encryptor()
        assert expected[12:172] == encryptor.update(payload) + encryptor.finalize()


@pytest.mark.timeout(60)
def test_relay_harness_smoke(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.relay",
        "--calls",
        "5",
        "--seconds",
        "3",
        "--reps",
        "1",
        "--nice",
        "0",
        "--settle",
        "1",
        "--idle",
        "1",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=55)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["kind"] == "relay"
    assert record["bridge"]["setup"]["calls"] == 5
    assert record["bridge"]["setup"]["failed"] == 0
    assert record["bridge"]["invites"] == 5
    assert record["bridge"]["byes"] >= 5  # every call hung up at the end (BYE, maybe retransmitted)
    assert record["bridge"]["idle_cpu_pct"] >= 0
    targets = {step["target"] for step in record["steps"]}
    assert "bridge" in targets
    if shutil.which("rtpengine"):
        assert "rtpengine" in targets
    for step in record["steps"]:
        result = step["result"]
        assert result["flows"] == 5
        assert result["relay_cpu_s"] > 0
        for direction in DIRECTIONS:
            d = result["directions"][direction]
            assert d["sent"] > 0
            assert d["received"] > 0, (step["target"], direction, d)
            assert d["auth_failures"] == 0
            assert d["latency_us"]["p50"] > 0
            # every datagram carried the kernel's arrival stamp, which comes before the blaster's read
            assert d["unstamped"] == 0, d
            assert d["read_latency_us"]["p50"] >= d["latency_us"]["p50"], d
    assert set(record["summary"]) == {str(float(5 * 50))}
    assert set(record["lossless_max"]) >= {"bridge", "rtpengine"}
    planes = [step["plane"] for step in record["steps"] if step["target"] == "bridge"]
    assert planes
    assert all(p["passes_per_s"] > 0 and p["sockets_per_pass"] >= 1 for p in planes)
