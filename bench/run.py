"""`make bench`: the whole benchmark set, results and plots under bench/results/.

    .venv/bin/python -m bench.run [--calls 500] [--seconds 8] [--reps 2] [--burst-calls 200] [--quick]

1. relay, `--calls` concurrent calls, offered load from 20 % to 100 % of G.711 (50 packets/s per call
   and direction), bridge and rtpengine interleaved                    -> relay-calls-*.json/.png
2. relay, `--burst-calls` calls at rising aggregate rates (bursts: far above 50 pps per call), same
   interleaving                                                         -> relay-burst-*.json/.png
3. call set-up: serial latency and open-loop calls/s, cheap and default scrypt -> setup-*.json
Each JSON holds the machine it ran on. `--quick` is a few-minute version (fewer calls and steps).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from bench import plot, relay, setup

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--burst-calls", type=int, default=200)
    ap.add_argument("--burst-rates", default="10000,20000,40000,60000,80000")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-setup", action="store_true")
    args = ap.parse_args(argv)
    stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    RESULTS.mkdir(exist_ok=True)
    calls, seconds, reps = args.calls, args.seconds, args.reps
    burst_rates = args.burst_rates
    if args.quick:
        calls, seconds, reps, burst_rates = min(calls, 100), 4.0, 1, "10000,40000"
    fractions = (0.2, 0.4, 0.6, 0.8, 1.0)
    rates = ",".join(str(round(f * 50 * calls)) for f in fractions)
    common = ["--seconds", str(seconds), "--reps", str(reps)]
    out = RESULTS / f"relay-calls-{stamp}.json"
    relay.main(["--calls", str(calls), "--rates", rates, *common, "--profile", "--out", str(out)])
    plot.main([str(out)])
    out = RESULTS / f"relay-burst-{stamp}.json"
    relay.main(["--calls", str(args.burst_calls), "--rates", burst_rates, *common, "--out", str(out)])
    plot.main([str(out)])
    if not args.skip_setup:
        out = RESULTS / f"setup-{stamp}.json"
        setup_args = ["--out", str(out)]
        if args.quick:
            setup_args += ["--serial", "10", "--rates", "10,50", "--seconds", "2"]
        setup.main(setup_args)


if __name__ == "__main__":
    main()
