"""Soak: N calls held for D seconds at real packet rates through the bridge, then all torn down.

    .venv/bin/python -m bench.soak [--calls 200] [--seconds 600] [--rate 50] [--interval 10]
                                   [--workers auto] [--out bench/results/soak-....json]

The bridge runs as `mccp-bridge serve` with its default workers (one per core; `--workers N` to
choose) and its default media timeout; calls go through their real signalling (bench.calls: MCCP
over WSS, REGISTER + INVITE to the harness's phone, ICE, DTLS) and carry `--rate` RTP packets per
second in each direction (G.711 at 20 ms: 50), SRTP towards the browser side, from the C blaster
(bench/blast.c) run in back-to-back `--interval` chunks. After every chunk the record gets one
sample: the bridge's RSS and open descriptors summed over its processes (/proc/PID/status,
/proc/PID/fd), the loss of that interval each way, latency, the bridge's CPU and the calls still
alive. A packet that arrives after its interval (and a short drain) counts as lost there and as
late in the next interval; the summary has both. A call the bridge ends early is counted as
dropped, with its end line from the bridge's log (`call end: ... code= reason= ended_by=`) when
found; its flow leaves the load.

At the end every call is hung up (MCCP `hangup` -> SIP BYE) and the bridge must be back to its
baseline: `mccp_bridge_active_calls` 0 in every worker (/metrics on the shared HTTPS port, scraped
over enough connections that SO_REUSEPORT reaches each worker), descriptors back to the count
before the calls, no UDP port of the media range still bound. The record (JSON) and a plot (RSS,
descriptors, loss over time) go to bench/results/; RSS and descriptor trends are least-squares
slopes per minute over the samples.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any

import trio
from bench.blaster import blast, build
from bench.browser_leg import BrowserSocket
from bench.calls import bridge_calls
from bench.phone_leg import Phone
from bench.processes import (
    BRIDGE_RTP_PORTS,
    PHONE,
    PHONE_PASSWORD,
    Bridge,
    calls_per_worker,
    cpu_seconds_all,
    fd_count_all,
    fetch_metrics,
    pin_harness,
    rss_kib_all,
    run_bridge,
    udp_ports_bound,
)
from bench.relay import RESULTS, machine, setup_summary

ACTIVE = re.compile(rb"^mccp_bridge_active_calls(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.MULTILINE)
REGISTER_EXPIRES = 3600


def slope_per_minute(times: list[float], values: list[float]) -> float | None:
    """Least-squares slope of `values` against `times` (seconds), per minute."""
    n = len(times)
    if n < 2:
        return None
    mt, mv = sum(times) / n, sum(values) / n
    var = sum((t - mt) ** 2 for t in times)
    if var == 0:
        return None
    return round(60 * sum((t - mt) * (v - mv) for t, v in zip(times, values, strict=True)) / var, 3)


async def active_calls(port: int) -> float:
    """`mccp_bridge_active_calls` from one GET /metrics (one new connection: one worker)."""
    body = await fetch_metrics(port)
    match = ACTIVE.search(body)
    if match is None:
        raise RuntimeError(f"no mccp_bridge_active_calls in /metrics: {body[:200]!r}")
    return float(match.group(1))


async def active_calls_all(port: int, workers: int) -> list[float]:
    """The gauge over 8 connections per worker (SO_REUSEPORT hashes each connection to a worker:
    a worker is missed with probability (1 - 1/N)^(8N), 1e-4 for 2 workers)."""
    values = []
    for _ in range(8 * workers):
        with trio.fail_after(10):
            values.append(await active_calls(port))
    return values


def ended_lines(log: Path, locals_: list[str]) -> dict[str, str]:
    """The bridge log's `call end:` line of each call, keyed by the WebSocket's local address."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {}
    found: dict[str, str] = {}
    for line in text.splitlines():
        if "call end:" not in line:
            continue
        for local in locals_:
            if f"[{local} " in line:
                found[local] = line.split("call end:", 1)[1].strip()[:400]
    return found


def snapshot(bridge: Bridge) -> dict[str, int]:
    pids = bridge.pids()
    return {"processes": len(pids), "rss_kib": rss_kib_all(pids), "fds": fd_count_all(pids)}


async def _refresh_registration(phone: Phone, bridge: Bridge) -> None:
    while True:
        await trio.sleep(REGISTER_EXPIRES / 2)
        await phone.register(("127.0.0.1", bridge.sip_port), PHONE_PASSWORD, expires=REGISTER_EXPIRES)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host = machine()
    pin_harness(args.nice, pin=False)
    build()
    record: dict[str, Any] = {
        "kind": "soak",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "config": {
            "calls": args.calls,
            "seconds": args.seconds,
            "rate_per_call_per_direction": args.rate,
            "interval": args.interval,
            "workers": args.workers or "auto",
            "scrypt_n": args.scrypt_n,
            "nice": args.nice,
            "srtp_profile": "AEAD_AES_128_GCM",
        },
        "samples": [],
    }
    bsock = await BrowserSocket.open()
    phone_rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await phone_rtp.bind(("127.0.0.1", 0))
    phone = await Phone.open(int(phone_rtp.getsockname()[1]), PHONE)
    low, high = BRIDGE_RTP_PORTS
    async with trio.open_nursery() as root:
        root.start_soon(bsock.run)
        async with run_bridge(
            scrypt_n=args.scrypt_n,
            nice=args.nice,
            workers=args.workers or None,
            log_level="info",
            media_timeout=None,
        ) as bridge:
            await phone.register(("127.0.0.1", bridge.sip_port), PHONE_PASSWORD, expires=REGISTER_EXPIRES)
            root.start_soon(phone.serve)
            root.start_soon(_refresh_registration, phone, bridge)
            await trio.sleep(0.5)
            baseline = {
                **snapshot(bridge),
                "media_ports_bound": udp_ports_bound(low, high),
                "active_calls": await active_calls_all(bridge.wss_port, bridge.workers),
            }
            record["baseline"] = baseline
            print(f"soak: bridge of {baseline['processes']} processes, baseline {baseline}", flush=True)
            t_setup = trio.current_time()
            async with bridge_calls(
                bridge.wss_port, bsock, phone, args.calls, concurrency=args.concurrency
            ) as calls:
                record["setup"] = setup_summary(calls.records)
                record["setup"]["seconds"] = round(trio.current_time() - t_setup, 2)
                ports = [c.bridge_port for c in calls.calls]
                record["setup"]["calls_per_worker"] = calls_per_worker(ports, bridge.workers)
                await trio.sleep(args.settle)
                record["up"] = snapshot(bridge)
                print(f"soak: {len(calls.calls)} calls up, {calls.failed} failed; {record['up']}", flush=True)
                await _hold(args, record, calls, bsock, phone_rtp, bridge)
                dropped = [c for c in calls.calls if c.dropped or c.ended.is_set()]
                reasons = ended_lines(bridge.log, [c.local for c in dropped])
                record["dropped"] = [
                    {
                        "call": c.number,
                        "local": c.local,
                        "end_code": c.end_code,
                        "bridge_log": reasons.get(c.local),
                    }
                    for c in dropped
                ]
                held = len(calls.calls)
            # bridge_calls hung up every call and waited for each to end.
            record["teardown"] = await _teardown(bridge, baseline, low, high)
            record["teardown"]["calls_hung_up"] = held - len(record["dropped"])
            record["teardown"]["invites"] = phone.invites
            record["teardown"]["byes"] = phone.byes
            record["teardown"]["legs_without_bye"] = sum(
                1 for leg in phone.by_call_id.values() if leg.bye_at is None
            )
        root.cancel_scope.cancel()
    bsock.sock.close()
    phone_rtp.close()
    phone.sock.close()
    record["summary"] = summarise(record)
    return record


async def _hold(
    args: argparse.Namespace,
    record: dict[str, Any],
    calls: Any,
    bsock: BrowserSocket,
    phone_rtp: trio.socket.SocketType,
    bridge: Bridge,
) -> None:
    """Media in back-to-back `interval` chunks until `seconds` are over; one sample per chunk."""
    t0 = trio.current_time()
    index_base = 0
    chunks = max(1, math.ceil(args.seconds / args.interval))
    bsock.pause()  # the blaster owns the browser socket's input (consent checks still go out)
    try:
        for k in range(chunks):
            alive = [i for i, c in enumerate(calls.calls) if not c.ended.is_set() and not c.dropped]
            if not alive:
                break
            seconds = min(args.interval, args.seconds - k * args.interval)
            pids = bridge.pids()
            cpu0, tc0 = cpu_seconds_all(pids), trio.current_time()
            result = await blast(
                [calls.flows[i] for i in alive],
                browser_fd=bsock.sock.fileno(),
                phone_fd=phone_rtp.fileno(),
                rate=args.rate * len(alive),
                seconds=seconds,
                relay_pids=pids,
                relay_cpu=-1,
                index_base=index_base,
                drain_ms=500,
            )
            cpu_pct = 100 * (cpu_seconds_all(bridge.pids()) - cpu0) / max(1e-9, trio.current_time() - tc0)
            index_base += math.ceil(args.rate * seconds) + 16
            d = result["directions"]
            sample = {
                "t": round(trio.current_time() - t0, 2),
                "calls_alive": sum(1 for c in calls.calls if not c.ended.is_set() and not c.dropped),
                "flows": len(alive),
                **snapshot(bridge),
                "bridge_cpu_pct": round(cpu_pct, 1),
                "harness_cpu_pct": result["harness_cpu_pct"],
                # Everything but the bridge on all CPUs (harness included; other jobs on a shared
                # machine), and the load average: what explains a latency spike.
                "others_cpu_pct": result["foreign_pct"],
                "loadavg_1m": float(Path("/proc/loadavg").read_text().split()[0]),
                **{
                    f"{name}_{key}": d[name][key]
                    for name in ("browser_to_phone", "phone_to_browser")
                    for key in ("sent", "received", "loss_pct", "late_from_earlier_run")
                },
                "latency_us_p50": max(d[n]["latency_us"]["p50"] for n in d),
                "latency_us_p99": max(d[n]["latency_us"]["p99"] for n in d),
                "auth_failures": sum(d[n]["auth_failures"] for n in d),
            }
            record["samples"].append(sample)
            print(
                f"soak t={sample['t']:7.1f}s alive {sample['calls_alive']} RSS {sample['rss_kib']} KiB "
                f"fds {sample['fds']} loss {sample['browser_to_phone_loss_pct']:.3f}%/"
                f"{sample['phone_to_browser_loss_pct']:.3f}% p99 {sample['latency_us_p99'] / 1000:.1f} ms "
                f"CPU {sample['bridge_cpu_pct']:.0f}%",
                flush=True,
            )
    finally:
        bsock.resume()


async def _teardown(bridge: Bridge, baseline: dict[str, Any], low: int, high: int) -> dict[str, Any]:
    """Wait (up to 20 s) until the bridge is back to its baseline; what it is back to."""
    result: dict[str, Any] = {}
    with trio.move_on_after(20):
        while True:
            now = snapshot(bridge)
            result = {
                **now,
                "media_ports_bound": udp_ports_bound(low, high),
                "active_calls": await active_calls_all(bridge.wss_port, bridge.workers),
            }
            if (
                result["fds"] <= baseline["fds"]
                and result["media_ports_bound"] <= baseline["media_ports_bound"]
                and not any(result["active_calls"])
            ):
                break
            await trio.sleep(0.5)
    result["clean"] = (
        result["processes"] == baseline["processes"]
        and result["fds"] <= baseline["fds"]
        and result["media_ports_bound"] <= baseline["media_ports_bound"]
        and not any(result["active_calls"])
    )
    return result


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    samples = record["samples"]
    times = [s["t"] for s in samples]

    def total(key: str) -> int:
        return int(sum(s[key] for s in samples))

    out: dict[str, Any] = {
        "calls_set_up": record["setup"]["calls"] - record["setup"]["failed"],
        "calls_dropped": len(record["dropped"]),
        "seconds_held": times[-1] if times else 0,
        "teardown_clean": record["teardown"]["clean"],
    }
    for name in ("browser_to_phone", "phone_to_browser"):
        sent, received = total(f"{name}_sent"), total(f"{name}_received")
        late = total(f"{name}_late_from_earlier_run")
        # Loss per interval counts a packet that came after its interval's end (+ drain) as lost;
        # it shows up as late in the next one. Never arrived: neither.
        out[f"{name}_loss_pct"] = round(100 * (sent - received) / sent, 4) if sent else None
        out[f"{name}_arrived_late"] = late
        out[f"{name}_never_arrived_pct"] = round(100 * (sent - received - late) / sent, 4) if sent else None
        out[f"{name}_worst_interval_loss_pct"] = max((s[f"{name}_loss_pct"] for s in samples), default=None)
    for key in ("rss_kib", "fds"):
        values = [float(s[key]) for s in samples]
        out[f"{key}_start"] = samples[0][key] if samples else None
        out[f"{key}_end"] = samples[-1][key] if samples else None
        out[f"{key}_slope_per_minute"] = slope_per_minute(times, values)
        # The second half alone: allocator warm-up (arenas, caches) early in a run is not a leak.
        half = len(samples) // 2
        out[f"{key}_slope_per_minute_second_half"] = slope_per_minute(times[half:], values[half:])
    return out


def plot(record: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = record["samples"]
    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    summary = record["summary"]
    axes[0].plot(t, [s["rss_kib"] / 1024 for s in samples], "o-", ms=3)
    axes[0].set_ylabel("bridge RSS (MiB)")
    config = record["config"]
    axes[0].set_title(
        f"soak: {config['calls']} calls x {config['rate_per_call_per_direction']} pps/dir, "
        f"RSS slope {summary['rss_kib_slope_per_minute']} KiB/min, "
        f"fds slope {summary['fds_slope_per_minute']}/min"
    )
    axes[1].plot(t, [s["fds"] for s in samples], "o-", ms=3, color="tab:green")
    axes[1].set_ylabel("bridge open fds")
    for name, color in (("browser_to_phone", "tab:blue"), ("phone_to_browser", "tab:orange")):
        axes[2].plot(
            t, [s[f"{name}_loss_pct"] for s in samples], "o-", ms=3, color=color, label=f"{name} late"
        )
        # Never arrived: missing at the interval's end and not among the next interval's late ones.
        never = [
            100
            * (
                s[f"{name}_sent"]
                - s[f"{name}_received"]
                - (nxt or {}).get(f"{name}_late_from_earlier_run", 0)
            )
            / max(1, s[f"{name}_sent"])
            for s, nxt in zip(samples, [*samples[1:], None], strict=True)
        ]
        axes[2].plot(t, never, "x--", ms=4, color=color, label=f"{name} never arrived")
    axes[2].set_ylabel("% late (> interval + 0.5 s) / lost")
    axes[3].plot(t, [s["latency_us_p50"] / 1000 for s in samples], "o-", ms=3, label="p50")
    axes[3].plot(t, [s["latency_us_p99"] / 1000 for s in samples], "o-", ms=3, label="p99")
    axes[3].set_yscale("log")
    if samples and "others_cpu_pct" in samples[0]:
        others = axes[3].twinx()
        others.plot(t, [s["others_cpu_pct"] for s in samples], ":", color="gray")
        others.set_ylabel("other jobs' CPU % (dotted)")
    axes[3].set_ylabel("latency, worse direction (ms)")
    axes[3].set_xlabel("minutes")
    axes[3].legend(loc="upper left")
    alive = axes[2].twinx()
    alive.plot(t, [s["calls_alive"] for s in samples], ":", color="gray", label="calls alive")
    alive.set_ylabel("calls alive")
    axes[2].legend(loc="upper left")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=600.0, help="how long the calls are held with media")
    ap.add_argument("--rate", type=float, default=50.0, help="RTP packets/s per call and direction")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples (blaster chunks)")
    ap.add_argument(
        "--workers", type=lambda s: 0 if s == "auto" else int(s), default=0, help="bridge workers (auto)"
    )
    ap.add_argument("--concurrency", type=int, default=16, help="call set-ups in flight")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between set-up and media")
    ap.add_argument("--scrypt-n", type=int, default=2**10, help="scrypt cost of the caller's password")
    ap.add_argument("--nice", type=int, default=-20, help="nice of bridge and harness (root only)")
    ap.add_argument("--out", type=Path, default=None, help="the JSON record (the PNG goes next to it)")
    args = ap.parse_args(argv)
    if not (1 <= args.calls <= 2000 and 0 < args.seconds <= 7 * 86400 and 0.5 <= args.interval <= 60):
        ap.error("bounds: 1 <= calls <= 2000, 0 < seconds <= 1 week, 0.5 <= interval <= 60")
    if not (0 < args.rate <= 500 and 0 <= args.workers <= 16):
        ap.error("bounds: 0 < rate <= 500, workers auto or 1..16")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    record = trio.run(run, args)
    out = args.out or RESULTS / f"soak-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    plot(record, out.with_suffix(".png"))
    print(json.dumps(record["summary"], indent=1))
    print(f"written {out} and {out.with_suffix('.png')}")
    return out


if __name__ == "__main__":
    main()
