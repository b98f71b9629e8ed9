"""Bugs found by the fuzzers in code this suite does not own, until their owners fix them.

A target that meets one of these exceptions stops feeding that input (the rest of its contract is
still checked) and counts the hit, so the CI runs keep looking for *new* bugs. Set
`MCCP_FUZZ_STRICT=1` to make them crash like any other bug. Each entry has a reproducer in
`fuzz/corpus/<target>/pending/`, replayed by tests/fuzz/test_fuzz_corpus.py as an expected failure.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter

STRICT = os.environ.get("MCCP_FUZZ_STRICT") == "1"
hits: Counter[str] = Counter()

# name -> (exception type, function name that must be on the traceback, description)
KNOWN: dict[str, tuple[type[BaseException], str, str]] = {}


def is_known(exc: BaseException) -> str | None:
    """The KNOWN name matching `exc` (type and a frame of that function), unless STRICT."""
    if STRICT:
        return None
    frames = {frame.name for frame in traceback.extract_tb(exc.__traceback__)}
    for name, (kind, function, _) in KNOWN.items():
        if isinstance(exc, kind) and function in frames:
            hits[name] += 1
            return name
    return None
