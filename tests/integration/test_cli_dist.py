"""The single-file executable: build a shiv zipapp and run it (`--help`, `serve` to `start WSS service`).

`make dist` runs shiv over the project and lets pip fetch the dependencies. The tests run inside a
loopback-only network namespace, so this builds the same zipapp offline: the runtime dependencies of
`mccp-bridge` (from its metadata, recursively) are copied from the venv where the tests run, together
with our four packages from src/, and shiv packs that site-packages with the `bridge.cli:main` entry point.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
SHIV = Path(sys.executable).parent / "shiv"
PACKAGES = ("bridge", "mccp", "sip", "rtp")


def _runtime_closure(name: str) -> list[md.Distribution]:
    """The installed distributions `name` needs at run time (no extras), recursively."""
    seen: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in md.requires(name) or []]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        dist = md.distribution(req.name)
        seen[key] = dist
        todo += [Requirement(r) for r in dist.requires or []]
    return list(seen.values())


def _fill_site_packages(target: Path) -> None:
    for dist in _runtime_closure("mccp-bridge"):
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # scripts outside site-packages, bytecode
            source = Path(str(dist.locate_file(file)))
            if source.is_file():
                (target / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / file)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / "src" / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("dist")
    site = work / "site-packages"
    _fill_site_packages(site)
    out = work / "mccp-bridge.pyz"
    command = [str(SHIV), "--compressed", "-p", "/usr/bin/env python3", "-e", "bridge.cli:main"]
    command += ["--site-packages", str(site), "-o", str(out)]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MCCP_BRIDGE_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(HOME=str(home), SHIV_ROOT=str(home / "shiv-root"), PYTHONUNBUFFERED="1")
    return env


@pytest.mark.timeout(150)
def test_pyz_help(pyz: Path, tmp_path: Path) -> None:
    # the system python3, not the venv's: the zipapp carries its own dependencies
    result = subprocess.run(
        ["/usr/bin/python3", str(pyz), "--help"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mccp-bridge")
    assert "MCCP_BRIDGE_WSS_PORT" in result.stdout
    assert pyz.stat().st_size < 30 * 2**20


@pytest.mark.timeout(150)
def test_pyz_serve_until_start_wss_service(pyz: Path, tmp_path: Path) -> None:
    """`python3 mccp-bridge.pyz serve --workers 2`: the supervisor starts the zipapp again as workers."""
    args = ["/usr/bin/python3", str(pyz), "serve", "--data-dir", str(tmp_path / "d")]
    args += ["--listen", "127.0.0.1", "--wss-port", "0", "--sip-port", "0", "--workers", "2"]
    with subprocess.Popen(
        args, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stderr is not None
            deadline = time.monotonic() + 60
            lines = []
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line)
                if "all 2 workers ready" in line:
                    break
            ports = {
                index: re.findall(rf"\[worker {index}\] bridge.app: start WSS service on wss://127\.0\.0\.1:(\d+)/mccp",
                                  "".join(lines))
                for index in (0, 1)
            }  # fmt: skip
            assert ports[0], lines
            assert ports[0] == ports[1], lines
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (tmp_path / "d" / "wrtcCert" / "server.crt").is_file()
