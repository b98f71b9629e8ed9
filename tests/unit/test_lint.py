"""Static checks run as part of the test suite: ruff (lint + format) and mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def test_ruff_check() -> None:
    _run(str(BIN / "ruff"), "check", "src", "tests", "bench")


def test_ruff_format() -> None:
    _run(str(BIN / "ruff"), "format", "--check", "src", "tests", "bench")


@pytest.mark.timeout(175)
def test_mypy_strict() -> None:
    _run(str(BIN / "mypy"))
