"""Relay benchmark: N concurrent calls through the real bridge and through rtpengine, interleaved.

    .venv/bin/python -m bench.relay [--calls 500] [--rates 25000] [--seconds 10] [--reps 3]
                                    [--workers 1] [--no-rtpengine] [--scrypt-n 1024] [--out x.json]

The bridge runs as a `mccp-bridge serve` subprocess on CPU 1; the harness (this Trio process and
the C blaster it starts) on CPU 0; rtpengine (userspace, one worker thread) on CPU 1 too. With
`--workers N` > 1 the bridge runs N worker processes (SO_REUSEPORT spreads the WebSocket
connections over them; the phone registers to worker 0, whose bindings the others read) against
rtpengine `--num-threads N`, and nothing is pinned: relay and harness share the CPUs, so the record
also has the harness's own CPU (this process and the blaster) per step. CPU and RSS of the bridge
are summed over the supervisor and all its workers. Bridge
calls are set up once through their real signalling (bench.calls) and carry every step; rtpengine
gets fresh calls per step (its receive-queue guard kills a stream for good after an overload).
Steps alternate bridge / rtpengine (the order flips every repetition), so their figures are ratios
measured under the same background load.

`--rates` are packets per second in EACH direction, spread over all calls (G.711 at 20 ms is 50 per
call: `--calls 500 --rates 25000`). Each step reports, per direction: packets sent and received,
loss, latency added (p50/p99/p99.9, loopback included: from the send to the datagram's arrival in the
harness's socket, the kernel's receive timestamp; `read_latency_us` to the harness's read of it) and
RFC 3550 jitter; for the relay process:
CPU seconds (all threads, /proc/PID/task/*/schedstat) and CPU microseconds per relayed packet; RSS
growth per established call; and the CPU load of everything else on the relay's CPU ("foreign").
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from bench.blaster import Flow, blast, build
from bench.browser_leg import BrowserSocket
from bench.calls import CallSet, SetupRecord, bridge_calls, rtpengine_calls
from bench.churn import bridge_churn, rtpengine_churn
from bench.phone_leg import Phone
from bench.processes import (
    PHONE,
    PHONE_PASSWORD,
    RELAY_CPU,
    Bridge,
    calls_per_worker,
    cpu_seconds_all,
    fetch_metrics,
    pin_harness,
    rss_kib,
    rss_kib_all,
    rtpengine_available,
    run_bridge,
    run_rtpengine,
)

RESULTS = Path(__file__).resolve().parent / "results"
FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        rtpe = subprocess.run(["rtpengine", "--version"], capture_output=True, text=True, timeout=5)
        rtpe_version = (rtpe.stdout or rtpe.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        rtpe_version = ""
    return {
        "code": code_version(),
        "host": socket.gethostname(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "trio": trio.__version__,
        "rtpengine": rtpe_version,
    }


def code_version() -> str:
    """The commit measured: $BENCH_COMMIT (a tree exported with `git archive`), else HEAD, with
    `+dirty` when src/ has uncommitted changes (other people's work in progress gets measured too)."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if dirty else "")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))], 3)


def setup_summary(records: list[SetupRecord]) -> dict[str, Any]:
    totals = [r.total_ms for r in records if r.ok and r.total_ms is not None]
    return {
        "calls": len(records),
        "failed": sum(1 for r in records if not r.ok),
        "errors": sorted({r.error for r in records if not r.ok})[:5],
        "total_ms": {"p50": percentile(totals, 0.5), "p99": percentile(totals, 0.99)},
    }


def _drain(sock: trio.socket.SocketType) -> int:
    """Throw away whatever waits in the socket (stragglers of the previous step); how many were
    RTP/RTCP."""
    count = 0
    with socket.socket(fileno=os.dup(sock.fileno())) as raw:
        while True:
            try:
                data = raw.recv(2048, socket.MSG_DONTWAIT)
                count += bool(data) and 128 <= data[0] <= 191  # media, not STUN consent replies
            except (BlockingIOError, InterruptedError):
                return count
            except OSError:
                continue


async def _wait_quiet(socks: list[trio.socket.SocketType], quiet: float = 1.0, limit: float = 90.0) -> float:
    """After an overload the relay keeps relaying its backlog (its socket buffers hold seconds of
    packets): discard what arrives until nothing came for `quiet` seconds. Returns the time waited."""
    t0 = trio.current_time()
    last = t0
    while trio.current_time() - last < quiet and trio.current_time() - t0 < limit:
        await trio.sleep(0.1)
        if sum(_drain(sock) for sock in socks):
            last = trio.current_time()
    return round(trio.current_time() - t0, 2)


async def _step(
    target: str,
    flows: list[Flow],
    bsock: BrowserSocket,
    phone_rtp: trio.socket.SocketType,
    *,
    rate: float,
    seconds: float,
    pids: list[int],
    pinned: bool,
    index_base: int,
    warmup: float,
    on_measure: Callable[[], Awaitable[None]] | None = None,
    churn: Callable[[float], Awaitable[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """One measured step; its `index_used` is the RTP indexes it took per flow (warm-up included)."""
    bsock.pause()
    waited = await _wait_quiet([bsock.sock, phone_rtp])
    try:
        index_used = 0

        async def load(seconds: float) -> dict[str, Any]:
            """`seconds` of load on the flows, continuing their RTP index."""
            nonlocal index_used
            result = await blast(
                flows,
                browser_fd=bsock.sock.fileno(),
                phone_fd=phone_rtp.fileno(),
                rate=rate,
                seconds=seconds,
                relay_pids=pids,
                relay_cpu=RELAY_CPU if pinned else -1,
                index_base=index_base + index_used,
            )
            index_used += math.ceil(rate * seconds / max(1, len(flows))) + 16
            return result

        if warmup > 0:
            # Not measured: every call's stream (re)starts at the same instant here, which no
            # real traffic does; both relays then handle each stream's first packets (latching,
            # rewriting, the bridge's C relay armed) at once. The step measures the steady state
            # right after, on the same streams (the index continues: no jump).
            await load(warmup)
        if on_measure is not None:
            await on_measure()
        own0, t0 = os.times(), trio.current_time()
        churned: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            if churn is not None:  # calls set up and torn down during the measured load (bench.churn)

                async def churner() -> None:
                    churned.update(await churn(seconds))

                nursery.start_soon(churner)
            result = await load(seconds)
        if churn is not None:
            result["churn"] = churned
        result["index_used"] = index_used
        result["warmup_s"] = warmup
        own1, wall = os.times(), trio.current_time() - t0
        # This Trio process (WebSockets, consent checks) during the step; the blaster's own is
        # result["harness_cpu_pct"].
        result["harness_py_cpu_pct"] = round(
            100 * ((own1.user - own0.user) + (own1.system - own0.system)) / max(wall, 1e-9), 1
        )
        result["relay_processes"] = len(pids)
        result["quiet_wait_s"] = waited
        return result
    finally:
        bsock.resume()


def _summarise_step(target: str, rep: int, rate: float, result: dict[str, Any]) -> str:
    d = result["directions"]
    b2p, p2b = d["browser_to_phone"], d["phone_to_browser"]
    return (
        f"rep {rep} {target:9s} {result['flows']:4d} calls {rate:8.0f} pps/dir: "
        f"loss {b2p['loss_pct']:.3f}%/{p2b['loss_pct']:.3f}%  "
        f"lat p50 {b2p['latency_us']['p50']:.0f}/{p2b['latency_us']['p50']:.0f} us "
        f"p99 {b2p['latency_us']['p99']:.0f}/{p2b['latency_us']['p99']:.0f} us "
        f"(read p99 {b2p['read_latency_us']['p99']:.0f}/{p2b['read_latency_us']['p99']:.0f})  "
        f"CPU {result['relay_cpu_pct']:.1f}% {result['relay_us_per_pkt']:.2f} us/pkt  "
        f"foreign {result['foreign_pct']:.0f}% (irq {result['relay_cpu_irq_pct']:.0f}%) "
        f"relay waited for CPU {result['relay_runqueue_wait_pct']:.0f}%  "
        f"harness CPU {result['harness_cpu_pct']:.0f}% (blaster) + {result.get('harness_py_cpu_pct', 0):.0f}%"
        + _summarise_churn(result.get("churn"))
    )


def _summarise_churn(churn: dict[str, Any] | None) -> str:
    if not churn:
        return ""
    return (
        f"  churn {churn['cps']:g} cps: {churn['set_up']}/{churn['offered']} up, {churn['failed']} failed, "
        f"{churn['ended']} ended, set-up p50 {churn['total_ms']['p50']} p99 {churn['total_ms']['p99']} ms"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host = machine()
    pinned = args.workers == 1
    harness_nice = args.nice if args.harness_nice is None else args.harness_nice
    pin_harness(harness_nice, pin=pinned)
    build()
    use_rtpe = args.rtpengine and rtpengine_available()
    record: dict[str, Any] = {
        "kind": "relay",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "config": {
            "calls": args.calls,
            "rates_per_direction": args.rates,
            "seconds": args.seconds,
            "reps": args.reps,
            "scrypt_n": args.scrypt_n,
            "nice": args.nice,
            "harness_nice": harness_nice,
            "workers": args.workers,
            "rtpengine_threads": args.workers,
            "pinned": pinned,
            "cpus_note": "bridge on CPU 1, harness and blaster on CPU 0"
            if pinned
            else "nothing pinned: bridge workers (or rtpengine threads), harness and blaster share every CPU;"
            " see harness_cpu_pct and harness_py_cpu_pct per step",
            "rtpengine": use_rtpe,
            "srtp_profile": "AEAD_AES_128_GCM",
            "single_port": args.single_port,
            "churn_cps": args.churn,
            "churn_hold_s": args.churn_hold,
        },
        "steps": [],
    }
    bsock = await BrowserSocket.open(spread=args.single_port)
    phone_rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await phone_rtp.bind(("127.0.0.1", 0))
    phone = await Phone.open(int(phone_rtp.getsockname()[1]), PHONE)
    # The churned calls' (bench.churn): the blaster owns bsock's input during the steps.
    churn_sock = await BrowserSocket.open(spread=args.single_port)
    async with trio.open_nursery() as root:
        root.start_soon(bsock.run)
        root.start_soon(churn_sock.run)
        async with run_bridge(
            scrypt_n=args.scrypt_n,
            nice=args.nice,
            gc_mode=args.gc_mode,
            workers=args.workers,
            single_port=args.single_port,
        ) as bridge:
            await phone.register(("127.0.0.1", bridge.sip_port), PHONE_PASSWORD)
            root.start_soon(phone.serve)
            await trio.sleep(0.5)
            rss_before = rss_kib_all(bridge.pids())
            t0, own0 = trio.current_time(), os.times()
            async with bridge_calls(
                bridge.wss_port, bsock, phone, args.calls, concurrency=args.concurrency
            ) as calls:
                setup_s = trio.current_time() - t0
                own1 = os.times()
                setup_harness_cpu = (own1.user - own0.user) + (own1.system - own0.system)
                # Let the set-up storm settle, and Trio's idle worker threads (scrypt ran in them)
                # exit (10 s): a thread that exits during a step takes its CPU time out of the
                # schedstat sum the blaster reads.
                await trio.sleep(args.settle)
                rss_after = rss_kib_all(bridge.pids())
                # The established calls' own cost with no media: WebSocket pings, STUN consent
                # checks every 5 s per call, timers.
                idle0, t_idle = cpu_seconds_all(bridge.pids()), trio.current_time()
                await trio.sleep(args.idle)
                idle_pct = 100 * (cpu_seconds_all(bridge.pids()) - idle0) / (trio.current_time() - t_idle)
                record["bridge"] = {
                    "setup": setup_summary(calls.records),
                    "setup_seconds": round(setup_s, 3),
                    "setup_harness_cpu_s": round(setup_harness_cpu, 2),
                    "processes": len(bridge.pids()),
                    "calls_per_worker": calls_per_worker(
                        [c.bridge_port for c in calls.calls], args.workers, bridge.browser_port
                    ),
                    "rss_kib_before": rss_before,
                    "rss_kib_after": rss_after,
                    "rss_kib_per_call": round((rss_after - rss_before) / max(1, len(calls.flows)), 2),
                    "invites": phone.invites,
                    "idle_cpu_pct": round(idle_pct, 1),
                }
                print(
                    f"bridge: {len(calls.flows)} calls up in {setup_s:.1f} s, {calls.failed} failed, "
                    f"RSS {rss_before} -> {rss_after} KiB, idle CPU {idle_pct:.1f}%",
                    flush=True,
                )
                if use_rtpe:
                    async with run_rtpengine(nice=args.nice, threads=args.workers) as rtpe:
                        await _steps(args, record, calls, bsock, phone_rtp, bridge, rtpe, churn_sock, phone)
                else:
                    await _steps(args, record, calls, bsock, phone_rtp, bridge, None, churn_sock, phone)
                bsock.pause()
                await _wait_quiet([bsock.sock, phone_rtp])  # the hang-ups queue behind any backlog
                bsock.resume()
                record["bridge"]["calls_dropped"] = sum(1 for c in calls.calls if c.dropped)
            await trio.sleep(0.5)
            record["bridge"]["byes"] = phone.byes
            gc_log = bridge.gc_log
        if gc_log is not None and gc_log.exists():
            record["bridge"]["gc"] = json.loads(gc_log.read_text())
            gc_log.unlink()
            print(f"bridge GC: {record['bridge']['gc']}", flush=True)
        root.cancel_scope.cancel()
    bsock.sock.close()
    churn_sock.sock.close()
    phone_rtp.close()
    phone.sock.close()
    record["summary"] = summarise(record)
    record["lossless_max"] = lossless_max(record["summary"])
    return record


async def _steps(
    args: argparse.Namespace,
    record: dict[str, Any],
    calls: CallSet,
    bsock: BrowserSocket,
    phone_rtp: trio.socket.SocketType,
    bridge: Bridge,
    rtpe: Any,
    churn_sock: BrowserSocket,
    phone: Phone,
) -> None:
    index_base = 0
    pinned = args.workers == 1
    churn_number = args.calls  # churned calls' numbers follow the established ones'
    hold = args.churn_hold

    async def churn_bridge(seconds: float) -> dict[str, Any]:
        nonlocal churn_number
        first, churn_number = churn_number, churn_number + math.ceil(args.churn * seconds) + 1
        return await bridge_churn(
            bridge.wss_port, churn_sock, phone, cps=args.churn, seconds=seconds - hold, hold=hold, first=first
        )

    async def churn_rtpengine(seconds: float) -> dict[str, Any]:
        return await rtpengine_churn(
            rtpe.ng_port,
            bsock.port,
            int(phone_rtp.getsockname()[1]),
            cps=args.churn,
            seconds=seconds - hold,
            hold=hold,
        )

    for rep in range(args.reps):
        for rate in args.rates:
            targets = ["bridge", "rtpengine"] if rtpe is not None else ["bridge"]
            if rep % 2:
                targets.reverse()
            for target in targets:
                if target == "bridge":
                    profiler = None
                    if args.profile and not record.get("profile") and rate == max(args.rates):
                        profiler = await start_profile(bridge.pids()[-1], args.seconds)
                    plane0: dict[str, float] | None = None

                    async def read_plane0() -> None:
                        nonlocal plane0
                        plane0 = await plane_counters(bridge.wss_port, args.workers)

                    result = await _step(
                        target,
                        calls.flows,
                        bsock,
                        phone_rtp,
                        rate=rate,
                        seconds=args.seconds,
                        pids=bridge.pids(),
                        pinned=pinned,
                        index_base=index_base,
                        warmup=args.warmup,
                        on_measure=read_plane0,
                        churn=churn_bridge if args.churn else None,
                    )
                    index_base += result["index_used"]
                    extra: dict[str, Any] = {"calls_dropped": sum(1 for c in calls.calls if c.dropped)}
                    if plane0 is not None:
                        plane1 = await plane_counters(bridge.wss_port, args.workers)
                        if plane1 is not None:
                            extra["plane"] = _plane_step(plane0, plane1, args.seconds)
                    if profiler is not None:
                        record["profile"] = await finish_profile(profiler, rate)
                else:
                    rss0 = rss_kib(rtpe.pid)
                    guard0 = rtpe.guard_hits()
                    async with rtpengine_calls(
                        rtpe.ng_port, bsock.port, int(phone_rtp.getsockname()[1]), args.calls
                    ) as rcalls:
                        rss1 = rss_kib(rtpe.pid)
                        result = await _step(
                            target,
                            rcalls.flows,
                            bsock,
                            phone_rtp,
                            rate=rate,
                            seconds=args.seconds,
                            pids=[rtpe.pid],
                            pinned=pinned,
                            index_base=0,
                            warmup=args.warmup,
                            churn=churn_rtpengine if args.churn else None,
                        )
                    extra = {
                        "setup": setup_summary(rcalls.records),
                        "rss_kib_per_call": round((rss1 - rss0) / max(1, len(rcalls.flows)), 2),
                        "guard_hits": rtpe.guard_hits() - guard0,
                    }
                step = {"target": target, "rep": rep, "rate_per_direction": rate, **extra, "result": result}
                record["steps"].append(step)
                print(_summarise_step(target, rep, rate, result), flush=True)


PLANE = re.compile(rb"^mccp_bridge_media_plane_(\w+)_total (\S+)$", re.MULTILINE)
WORKER = re.compile(rb'^mccp_bridge_worker\{[^}]*index="(\d+)"', re.MULTILINE)


async def plane_counters(port: int, workers: int = 1) -> dict[str, float] | None:
    """The media planes' counters (passes, handler_calls, coalesced, late_*) summed over the
    workers: GET /metrics until every worker has answered once (they share the port); None if
    some worker did not answer within 40 tries."""
    seen: dict[bytes, dict[str, float]] = {}
    for _ in range(40):
        body = await fetch_metrics(port)
        index = WORKER.search(body)
        seen[index.group(1) if index else b"0"] = {
            m.group(1).decode(): float(m.group(2)) for m in PLANE.finditer(body)
        }
        if len(seen) >= workers:
            total: dict[str, float] = {}
            for counters in seen.values():
                for key, value in counters.items():
                    total[key] = total.get(key, 0) + value
            return total
    return None


def _plane_step(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Passes per second, sockets served per pass, share of coalesced passes over one step."""
    passes = after.get("passes", 0) - before.get("passes", 0)
    calls = after.get("handler_calls", 0) - before.get("handler_calls", 0)
    coalesced = after.get("coalesced", 0) - before.get("coalesced", 0)
    return {
        "passes_per_s": round(passes / seconds, 1),
        "sockets_per_pass": round(calls / passes, 2) if passes else 0.0,
        "coalesced_pct": round(100 * coalesced / passes, 1) if passes else 0.0,
        # busy passes resumed late (over 2 / 10 / 50 ms): the plane's share of the latency tail
        **{key: after.get(key, 0) - before.get(key, 0) for key in ("late_2ms", "late_10ms", "late_50ms")},
    }


def summarise(record: dict[str, Any]) -> dict[str, Any]:
    """Medians per (target, rate) and the bridge/rtpengine ratios of CPU per packet."""
    out: dict[str, Any] = {}
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for step in record["steps"]:
        groups.setdefault((step["target"], step["rate_per_direction"]), []).append(step["result"])
    for (target, rate), results in sorted(groups.items()):

        def med(f: Any, results: list[dict[str, Any]] = results) -> float:
            return round(float(statistics.median(f(r) for r in results)), 3)

        dirs = ("browser_to_phone", "phone_to_browser")
        out.setdefault(str(rate), {})[target] = {
            "runs": len(results),
            "us_per_packet": med(lambda r: r["relay_us_per_pkt"]),
            "cpu_pct": med(lambda r: r["relay_cpu_pct"]),
            "loss_pct_max": round(max(r["directions"][d]["loss_pct"] for r in results for d in dirs), 4),
            "received_pps": {d: med(lambda r, d=d: r["directions"][d]["received_pps"]) for d in dirs},
            "latency_us_p50": {d: med(lambda r, d=d: r["directions"][d]["latency_us"]["p50"]) for d in dirs},
            "latency_us_p99": {d: med(lambda r, d=d: r["directions"][d]["latency_us"]["p99"]) for d in dirs},
            "latency_us_p999": {
                d: med(lambda r, d=d: r["directions"][d]["latency_us"]["p999"]) for d in dirs
            },
            "read_latency_us_p99": {
                d: med(lambda r, d=d: r["directions"][d]["read_latency_us"]["p99"]) for d in dirs
            },
            "jitter_us_mean": {d: med(lambda r, d=d: r["directions"][d]["jitter_us"]["mean"]) for d in dirs},
            "foreign_pct": med(lambda r: r["foreign_pct"]),
            "harness_cpu_pct": med(lambda r: r["harness_cpu_pct"] + r.get("harness_py_cpu_pct", 0)),
        }
    for key, targets in out.items():
        if "bridge" in targets and "rtpengine" in targets:
            ratios = []
            b = [
                s for s in record["steps"] if s["target"] == "bridge" and str(s["rate_per_direction"]) == key
            ]
            r = [
                s
                for s in record["steps"]
                if s["target"] == "rtpengine" and str(s["rate_per_direction"]) == key
            ]
            for sb, sr in zip(b, r, strict=False):
                if sr["result"]["relay_us_per_pkt"] > 0:
                    ratios.append(sb["result"]["relay_us_per_pkt"] / sr["result"]["relay_us_per_pkt"])
            if ratios:
                targets["cpu_ratio_bridge_over_rtpengine"] = round(statistics.median(ratios), 3)
                targets["cpu_ratios"] = [round(x, 3) for x in ratios]
    return out


def lossless_max(summary: dict[str, Any]) -> dict[str, Any]:
    """Per relay, the highest offered rate (packets/s per direction) below which every step lost
    under 0.1 % (the bursts goal), and the bridge/rtpengine ratio of those rates."""
    out: dict[str, Any] = {}
    for target in ("bridge", "rtpengine"):
        best: float | None = None
        for rate in sorted(summary, key=float):
            figures = summary[rate].get(target)
            if figures is None:
                continue
            if figures["loss_pct_max"] >= 0.1:
                break
            best = float(rate)
        out[target] = best
    if out["bridge"] and out["rtpengine"]:
        out["ratio"] = round(out["bridge"] / out["rtpengine"], 3)
    return out


async def start_profile(pid: int, seconds: float) -> tuple[trio.Process, Path]:
    """py-spy (sampling, non-blocking) on the bridge for one step; collapsed stacks to a file."""
    out = Path(f"/tmp/bench-pyspy-{pid}.txt")
    cmd = [
        "py-spy",
        "record",
        "--nonblocking",
        "--format",
        "raw",
        "-r",
        "250",
        "-d",
        str(int(seconds)),
        "-p",
        str(pid),
        "-o",
        str(out),
    ]
    exe = Path(sys.executable).parent / "py-spy"
    if exe.exists():
        cmd[0] = str(exe)
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await trio.sleep(0.5)
    return proc, out


async def finish_profile(profiler: tuple[trio.Process, Path], rate: float) -> dict[str, Any]:
    """Top functions by own samples and by inclusive samples (from the collapsed stacks)."""
    proc, path = profiler
    with trio.move_on_after(30):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"error": "no py-spy output"}
    finally:
        path.unlink(missing_ok=True)
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        frames = [FRAME.sub(r"\1 (\2)", f) for f in frames]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count

    def top(table: dict[str, int]) -> list[tuple[str, float]]:
        return [
            (k, round(100 * v / max(1, total), 1))
            for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:25]
        ]

    return {"rate_per_direction": rate, "samples": total, "own_pct": top(own), "inclusive_pct": top(incl)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=None,
        help="packets/s per direction, comma-separated (default: 50 per call)",
    )
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=16, help="call set-ups in flight")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="bridge worker processes (and rtpengine threads); 1 is pinned to CPU 1, more are not",
    )
    ap.add_argument("--settle", type=float, default=12.0, help="seconds between set-up and load")
    ap.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of load before each measured step, not measured (0: none; see _step)",
    )
    ap.add_argument("--idle", type=float, default=5.0, help="seconds the idle calls' CPU is measured")
    ap.add_argument(
        "--scrypt-n",
        type=int,
        default=2**10,
        help="scrypt cost of the caller's password (the bridge's default is 2**14)",
    )
    ap.add_argument("--nice", type=int, default=-20, help="nice of relays and harness (root only)")
    ap.add_argument(
        "--harness-nice",
        type=int,
        default=None,
        help="nice of the harness alone (default: --nice); e.g. 0 with --workers 2, where relay and "
        "harness share the CPUs, so that the relay (either) is not made to wait for the harness",
    )
    ap.add_argument(
        "--churn",
        type=float,
        default=0.0,
        help="calls/s set up and torn down on each relay during every measured step, besides the "
        "established ones (bench.churn; 0: none)",
    )
    ap.add_argument("--churn-hold", type=float, default=2.0, help="seconds each churned call is held")
    ap.add_argument(
        "--single-port",
        action="store_true",
        help="the bridge serves every browser leg of a worker on one port (--rtp-browser-port; "
        "docs/media-ports.md); each call's browser leg then has an address of its own, 127.2.X.Y",
    )
    ap.add_argument("--no-rtpengine", dest="rtpengine", action="store_false")
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the bridge during its first step at the top rate"
    )
    ap.add_argument(
        "--gc-mode",
        choices=["probe", "freeze", "off"],
        default=None,
        help="run the bridge under bench.gcprobe (an experiment, not the product)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.rates is None:
        args.rates = [50.0 * args.calls]
    if not (1 <= args.calls <= 2000 and 0 < args.seconds <= 60 and 1 <= args.reps <= 10):
        ap.error("bounds: 1 <= calls <= 2000, 0 < seconds <= 60, 1 <= reps <= 10")
    if not 1 <= args.workers <= 16:
        ap.error("bounds: 1 <= workers <= 16")
    if args.churn and not (0 < args.churn <= 200 and 0 < args.churn_hold < args.seconds):
        ap.error("bounds: 0 < churn <= 200 calls/s, 0 < churn-hold < seconds")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    record = trio.run(run, args)
    out = args.out or RESULTS / f"relay-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record["summary"], indent=1))
    print(f"written {out}")
    return out


if __name__ == "__main__":
    main()
