"""Replay every fuzz corpus file through its target's `one_input` (seeds and reproducers).

Files in `fuzz/corpus/<target>/` must pass with the known-issue tolerance off. Files in
`fuzz/corpus/<target>/pending/` reproduce bugs in code owned by others (see fuzz/known.py): they
are expected to fail, strictly, so the day one is fixed this test says so and the file moves up.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from fuzz._runner import TARGETS

from fuzz import known

CORPUS = Path(__file__).parents[2] / "fuzz" / "corpus"


def _files(pending: bool) -> list[tuple[str, Path]]:
    out = []
    for target in TARGETS:
        folder = CORPUS / target / "pending" if pending else CORPUS / target
        out += [(target, p) for p in sorted(folder.glob("*")) if p.is_file()]
    return out


@pytest.fixture(autouse=True)
def _strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(known, "STRICT", True)


def test_every_target_has_seeds() -> None:
    for target in TARGETS:
        assert len(list((CORPUS / target).glob("seed-*"))) >= 5, target


@pytest.mark.parametrize(("target", "path"), _files(pending=False), ids=lambda v: getattr(v, "name", v))
def test_corpus_file_passes(target: str, path: Path) -> None:
    importlib.import_module(f"fuzz.{target}").one_input(path.read_bytes())


def test_pending_reproducers_still_fail() -> None:
    """Each pending reproducer still fails (strictly): the day one is fixed, it must move up."""
    for target, path in _files(pending=True):
        one_input = importlib.import_module(f"fuzz.{target}").one_input
        with pytest.raises((ValueError, TypeError, RuntimeError)):
            one_input(path.read_bytes())
