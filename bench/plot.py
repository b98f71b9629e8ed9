"""PNG plots of a relay run: loss, latency and CPU per packet against offered load, bridge and
rtpengine on the same axes (medians over the repetitions; every repetition drawn as a dot).

    .venv/bin/python -m bench.plot bench/results/relay-....json [--out-prefix bench/results/sweep]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"bridge": "tab:blue", "rtpengine": "tab:orange"}
DIRS = ("browser_to_phone", "phone_to_browser")


def _series(
    record: dict[str, Any], target: str, value: Callable[[dict[str, Any]], float]
) -> tuple[list[float], list[float], list[tuple[float, float]]]:
    by_rate: dict[float, list[float]] = {}
    for step in record["steps"]:
        if step["target"] == target:
            by_rate.setdefault(2 * step["rate_per_direction"], []).append(value(step["result"]))
    xs = sorted(by_rate)
    dots = [(x, v) for x in xs for v in by_rate[x]]
    return xs, [statistics.median(by_rate[x]) for x in xs], dots


def _panel(
    ax: Any, record: dict[str, Any], value: Callable[[dict[str, Any]], float], label: str, style: str = "-"
) -> None:
    for target in ("bridge", "rtpengine"):
        xs, ys, dots = _series(record, target, value)
        if not xs:
            continue
        ax.plot(xs, ys, style, marker="o", color=COLORS[target], label=f"{target} {label}".strip())
        ax.scatter([d[0] for d in dots], [d[1] for d in dots], s=8, color=COLORS[target], alpha=0.4)


def plot(record: dict[str, Any], prefix: Path) -> list[Path]:
    calls = record["config"]["calls"]
    m = record["machine"]
    where = (
        f"{m.get('cpu', '')}, {m.get('cpus', '?')} vCPU, kernel {m.get('kernel', '')}, {record['started']}"
    )
    cfg = record["config"]
    workers = cfg.get("workers", 1)
    placement = (
        "relay pinned to 1 CPU"
        if cfg.get("pinned", workers == 1)
        else f"{workers} bridge workers / rtpengine threads, nothing pinned"
    )
    title = f"{calls} calls, SRTP (GCM) <-> RTP, both directions; {placement}\n{where}"
    out = []
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    ax = axes[0]
    _panel(ax, record, lambda r: max(r["directions"][d]["loss_pct"] for d in DIRS), "")
    ax.set_ylabel("loss, worse direction (%)")
    ax.set_title("loss")
    ax = axes[1]
    _panel(ax, record, lambda r: max(r["directions"][d]["latency_us"]["p50"] for d in DIRS) / 1000, "p50")
    _panel(
        ax, record, lambda r: max(r["directions"][d]["latency_us"]["p99"] for d in DIRS) / 1000, "p99", "--"
    )
    ax.set_yscale("log")
    ax.set_ylabel("added latency, worse direction (ms, log)")
    ax.set_title("latency, send to arrival (loopback + relay)")
    ax = axes[2]
    _panel(ax, record, lambda r: r["relay_us_per_pkt"], "")
    ax.set_ylabel("relay CPU per relayed packet (µs)")
    ax.set_title("CPU cost")
    for ax in axes:
        ax.set_xlabel("offered load, both directions (packets/s)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = prefix.with_name(prefix.name + ".png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    out.append(path)
    return out


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser()
    ap.add_argument("record", type=Path)
    ap.add_argument("--out-prefix", type=Path, default=None)
    args = ap.parse_args(argv)
    record = json.loads(args.record.read_text())
    prefix = args.out_prefix or args.record.with_suffix("")
    paths = plot(record, prefix)
    for p in paths:
        print(f"written {p}")
    return paths


if __name__ == "__main__":
    main()
