"""Markdown tables from relay and set-up records (for bench/README.md).

.venv/bin/python -m bench.table bench/results/relay-calls-....json [more.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DIRS = ("browser_to_phone", "phone_to_browser")


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us < 10_000 else f"{us / 1000:.0f} ms"


def relay_table(record: dict[str, Any]) -> str:
    b = record.get("bridge", {})
    config = record["config"]
    workers = config.get("workers", 1)
    pinning = "pinned to CPU 1, harness on CPU 0"
    if not config.get("pinned", True):
        pinning = "not pinned: relay and harness share the CPUs"
    lines = [
        f"bridge --workers {workers} vs rtpengine --num-threads {config.get('rtpengine_threads', 1)} "
        f"({pinning}); "
        f"calls per worker {b.get('calls_per_worker', '-')}, set-up {b.get('setup_seconds')} s",
        f"{record['config']['calls']} calls, {record['config']['seconds']} s steps, "
        f"{record['config']['reps']} repetitions (medians; loss: worse direction, max over repetitions); "
        f"bridge RSS {b.get('rss_kib_per_call')} KiB/call, idle CPU {b.get('idle_cpu_pct')} %, "
        f"calls dropped {b.get('calls_dropped')}",
        "",
        "| offered pps/dir | bridge µs/pkt (CPU %) | rtpengine µs/pkt (CPU %) | ratio | loss bridge / rtpe "
        "| bridge p50 / p99 / p99.9 | rtpe p50 / p99 / p99.9 | harness CPU % (bridge / rtpe steps) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rate, targets in record["summary"].items():
        br, rt = targets.get("bridge"), targets.get("rtpengine")
        if br is None:
            continue

        def lat(t: dict[str, Any]) -> str:
            return " / ".join(
                _ms(max(t[k][d] for d in DIRS))
                for k in ("latency_us_p50", "latency_us_p99", "latency_us_p999")
            )

        ratio = targets.get("cpu_ratio_bridge_over_rtpengine")
        lines.append(
            f"| {float(rate):.0f} | {br['us_per_packet']:.1f} ({br['cpu_pct']:.0f}) | "
            f"{(str(rt['us_per_packet']) + ' (' + str(round(rt['cpu_pct'])) + ')') if rt else '-'} | "
            f"{(str(ratio) + '×') if ratio else '-'} | "
            f"{br['loss_pct_max']:.2f} % / {(str(rt['loss_pct_max']) + ' %') if rt else '-'} | "
            f"{lat(br)} | {lat(rt) if rt else '-'} | "
            f"{br.get('harness_cpu_pct', '-')} / {rt.get('harness_cpu_pct', '-') if rt else '-'} |"
        )
    best = record.get("lossless_max")
    if best and any(t.get("rtpengine") for t in record["summary"].values()):
        lines += [
            "",
            f"Highest offered rate with every step under 0.1 % loss: bridge {best['bridge']}, "
            f"rtpengine {best['rtpengine']} pps/dir (ratio {best.get('ratio', '-')}).",
        ]
    planes = [s["plane"] for s in record["steps"] if s["target"] == "bridge" and s.get("plane")]
    if planes:
        lines += [
            "",
            "Media plane per bridge step (passes/s, sockets served per pass, coalesced passes %, "
            "busy passes resumed > 2 / 10 / 50 ms late): "
            + "; ".join(
                f"{float(s['rate_per_direction']):.0f}: {s['plane']['passes_per_s']:.0f}, "
                f"{s['plane']['sockets_per_pass']}, {s['plane']['coalesced_pct']}, "
                f"{s['plane'].get('late_2ms', '-')}/{s['plane'].get('late_10ms', '-')}/"
                f"{s['plane'].get('late_50ms', '-')}"
                for s in record["steps"]
                if s["target"] == "bridge" and s.get("plane")
            ),
        ]
    return "\n".join(lines)


def setup_table(record: dict[str, Any]) -> str:
    lines = [
        "| scrypt N | INVITE p50 | answer p50 | DTLS p50 | first packet p50 / p99 | bridge CPU per call | "
        "open loop offered -> achieved calls/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for bridge in record["bridges"]:
        s = bridge["serial"]
        loops = ", ".join(f"{o['offered_cps']:g}->{o['achieved_cps']:g}" for o in bridge["open_loop"])
        lines.append(
            f"| 2^{int(bridge['scrypt_n']).bit_length() - 1} | {s['invite_ms']['p50']} ms | "
            f"{s['answered_ms']['p50']} ms | {s['dtls_ms']['p50']} ms | {s['media_ms']['p50']} / "
            f"{s['media_ms']['p99']} ms | {s['bridge_cpu_ms_per_call']} ms | {loops} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    for name in argv if argv is not None else sys.argv[1:]:
        record = json.loads(Path(name).read_text())
        print(f"### {Path(name).name}\n")
        print(relay_table(record) if record["kind"] == "relay" else setup_table(record))
        print()


if __name__ == "__main__":
    main()
