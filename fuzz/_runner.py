"""Run one target under atheris: `python -m fuzz._runner <target> [libFuzzer flags] [corpus dirs]`.

The target module (and through it the project's packages) is imported inside
`atheris.instrument_imports`, so this runner must be what imports them first.
"""

from __future__ import annotations

import importlib
import os
import sys

import atheris  # type: ignore[import-untyped]

TARGETS = (
    "mccp_json",
    "sip_datagram",
    "sip_stream",
    "sdp",
    "stun_ice",
    "dtls_demux",
    "rtp_rtcp",
    "steady_relay",
)


def main() -> None:
    """Instrument the target's packages and hand its `one_input` to libFuzzer (never returns)."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m fuzz._runner {{{','.join(TARGETS)}}} [libFuzzer flags] [corpus]")
    target = sys.argv.pop(1)
    with atheris.instrument_imports(include=["bridge", "mccp", "sip", "rtp", "fuzz"]):
        module = importlib.import_module(f"fuzz.{target}")
    # libFuzzer re-runs argv[0] for -merge=1/-fork: point MCCP_FUZZ_ARGV0 at an executable that
    # runs `python -m fuzz._runner <target> "$@"` (see docs/security.md, "Fuzzing").
    argv0 = os.environ.get("MCCP_FUZZ_ARGV0", sys.argv[0])
    atheris.Setup([argv0, *sys.argv[1:]], module.one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
