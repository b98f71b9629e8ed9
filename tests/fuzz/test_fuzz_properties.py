"""The fuzz targets' contracts under hypothesis: random bytes and mutated seeds, derandomized.

atheris finds deep paths by coverage; these runs are its reproducible complement in every test run
(and work where atheris is not installed). 150 examples per target and strategy.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from fuzz._runner import TARGETS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import known

CORPUS = Path(__file__).parents[2] / "fuzz" / "corpus"
SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


@st.composite
def mutated_seed(draw: st.DrawFn, target: str) -> bytes:
    seeds = sorted(CORPUS.joinpath(target).glob("seed-*"))
    data = bytearray(draw(st.sampled_from(seeds)).read_bytes())
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        match draw(st.sampled_from(["set", "insert", "delete", "dup"])):
            case "set" if pos < len(data):
                data[pos] = draw(st.integers(0, 255))
            case "insert":
                data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
            case "delete":
                del data[pos : pos + draw(st.integers(1, 16))]
            case _:
                data[pos:pos] = data[pos : pos + draw(st.integers(1, 32))]
    return bytes(data)


@pytest.fixture(autouse=True)
def _strict(monkeypatch: pytest.MonkeyPatch) -> None:
    # The known bugs (fuzz/known.py) are tolerated here as in the CI atheris runs: their
    # reproducers are replayed strictly by test_fuzz_corpus.py.
    monkeypatch.setattr(known, "STRICT", False)


@pytest.mark.parametrize("target", TARGETS)
def test_random_bytes_keep_the_contract(target: str) -> None:
    one_input = importlib.import_module(f"fuzz.{target}").one_input

    @SETTINGS
    @given(st.binary(max_size=1500))
    def run(data: bytes) -> None:
        one_input(data)

    run()


@pytest.mark.parametrize("target", TARGETS)
def test_mutated_seeds_keep_the_contract(target: str) -> None:
    one_input = importlib.import_module(f"fuzz.{target}").one_input

    @SETTINGS
    @given(mutated_seed(target))
    def run(data: bytes) -> None:
        one_input(data)

    run()
