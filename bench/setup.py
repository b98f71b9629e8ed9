"""Call set-up benchmark: set-up latency and calls per second through the real bridge.

    .venv/bin/python -m bench.setup [--serial 50] [--rates 5,10,20,40] [--seconds 5]
                                    [--scrypt-n 1024,16384] [--callers warm,cold] [--profile]
                                    [--log-level warning] [--out bench/results/x.json]

Each call goes through the whole real signalling (bench.calls): MCCP `call` over WSS -> the caller's
password checked (scrypt) -> SIP INVITE at the phone registered to the bridge -> 200 OK/ACK ->
MCCP `answer`; ICE check and DTLS -> SRTP keys; then ONE SRTP packet from the browser side, timed
until it arrives as plain RTP at the phone: "first packet relayed". Then the page hangs up (BYE).

* serial: one call at a time (latency without contention), `--serial` calls;
* open loop: calls started at `--rates` calls/s for `--seconds` each, whatever the bridge does;
  reports the achieved set-up rate (calls completed per second), latency percentiles and failures.

Both for each `--scrypt-n`: the bridge's default cost (2**14, ~60 ms of CPU per login, run in worker
threads) dominates a cold login, so the run also shows what the rest costs with a cheap hash (2**10).
And both for each kind of `--callers`:

* warm: every call from the same extension and password (a softphone that redials, a page reloaded):
  after the first call the bridge's verified-credentials cache answers without scrypt;
* cold: every call from another extension (COLD_CALLERS extensions added to the bridge's table, then
  SIGHUP): every login costs one scrypt.

`--profile` samples the bridge with py-spy during the serial calls (first kind of callers): the
record gets the top functions in ms of CPU per call (own and inclusive), and the collapsed stacks are
kept beside the JSON. The bridge runs on CPU 1, the harness on CPU 0, as in
bench.relay.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import re
import signal
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio
from bench import browser_leg
from bench.browser_leg import BrowserCall, BrowserSocket, CallFailed, run_call
from bench.phone_leg import Phone
from bench.processes import (
    CALLER,
    CALLER_PASSWORD,
    PHONE,
    PHONE_PASSWORD,
    cpu_seconds,
    pin_harness,
    run_bridge,
)
from bench.relay import RESULTS, machine, percentile
from bridge.extensions import (
    SCRYPT_IMPLEMENTATION,
    Extension,
    ExtensionTable,
    digest_ha1,
    make_extension,
    save_extensions,
)
from rtp.srtp import SrtpTx

COLD_FIRST = 100_000  # cold callers are extensions 100000, 100001, ... (all with CALLER_PASSWORD)
PROFILE_RATE = 250  # py-spy samples per second: one sample is 4 ms of a thread's CPU
FRAME = re.compile(r"^(.*) \((.*?):\d+\)$")
# Where a sampled stack's CPU goes. First the self-contained pieces, wherever they are in the stack;
# then the innermost frame that names a layer. A stack whose innermost frame waits in epoll is idle
# (py-spy cannot always tell a sleeping thread).
IDLE_LEAVES = ("EpollIOManager.get_events", "EpollIOManager._epoll_wait")
ANYWHERE = (
    ("password check (scrypt, cache, thread)", ("bridge/auth.py", "bridge/extensions.py", "_thread_cache")),
    ("WSS TLS handshake", ("SSLStream._do_handshake",)),
    ("HTTP head + WebSocket upgrade", ("_read_head", "wrap_server_stream")),
    ("DTLS", ("rtp/dtls.py",)),
    ("ICE/STUN", ("rtp/stun.py", "rtp/ice_lite.py")),
    ("SDP", ("rtp/sdp",)),
    ("SRTP", ("rtp/srtp.py",)),
    ("media ports", ("rtp/ports.py",)),
    ("SIP parse", ("sip/parser.py",)),
    ("logging", ("logging/",)),
)
INNERMOST = (
    ("WSS TLS records", ("trio/_ssl.py", "ssl.py")),
    ("WebSocket frames + JSON", ("trio_websocket", "wsproto", "json/")),
    ("MCCP server", ("mccp/",)),
    ("SIP build, transactions, dialogs", ("sip/",)),
    ("media plane (other)", ("rtp/",)),
    ("bridge call (other)", ("bridge/",)),
    ("Trio scheduler and sockets", ("trio/", "outcome/", "socket.py")),
)


@dataclass
class Setup:
    """One call's milestones in ms after the MCCP `call` was sent (None: not reached)."""

    ok: bool
    error: str = ""
    connect_ms: float | None = None  # TCP + TLS + WebSocket upgrade, before the `call`
    invite_ms: float | None = None  # INVITE arrived at the phone
    answered_ms: float | None = None  # MCCP answer at the page (the phone answered at once)
    dtls_ms: float | None = None  # DTLS connected, SRTP keyed
    media_ms: float | None = None  # first SRTP packet relayed to the phone as RTP


class FirstPackets:
    """The phone's RTP socket: arrival time of the first packet per bridge source port."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.arrived: dict[int, float] = {}
        self.event = trio.Event()

    async def run(self) -> None:
        while True:
            _, src = await self.sock.recvfrom(2048)
            self.arrived.setdefault(int(src[1]), trio.current_time())
            self.event.set()
            self.event = trio.Event()

    async def wait(self, port: int, timeout: float) -> float:
        with trio.fail_after(timeout):
            while port not in self.arrived:
                await self.event.wait()
        return self.arrived.pop(port)


def _ms(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000, 3)


async def one_call(
    wss_port: int, bsock: BrowserSocket, phone: Phone, firsts: FirstPackets, number: int, caller: str = CALLER
) -> Setup:
    call = BrowserCall(number, ssrc=int.from_bytes(os.urandom(4), "big"))
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(run_call, bsock, call, wss_port, caller, CALLER_PASSWORD, PHONE)
            leg = await phone.wait_leg(call.session_id, timeout=5)
            assert call.profile is not None
            rtp = struct.pack("!BBHII", 0x80, 0, 1, 160, call.ssrc) + b"\xd5" * 160
            t_send = trio.current_time()
            await bsock.sock.sendto(
                SrtpTx(call.profile, call.tx_key).protect(rtp), ("127.0.0.1", call.bridge_port)
            )
            arrived = await firsts.wait(leg.bridge_rtp_port, timeout=5)
        except (CallFailed, trio.TooSlowError) as exc:
            call.hangup.set()
            return Setup(False, str(exc) or type(exc).__name__)
        finally:
            call.hangup.set()
        t0 = call.timings.sent_call
        del t_send
        return Setup(
            True,
            connect_ms=_ms(t0, call.timings.connect),
            invite_ms=_ms(leg.invite_at, t0),
            answered_ms=_ms(call.timings.answer, t0),
            dtls_ms=_ms(call.timings.dtls_done, t0),
            media_ms=_ms(arrived, t0),
        )


def summary(setups: list[Setup], elapsed: float, offered: float | None) -> dict[str, Any]:
    ok = [s for s in setups if s.ok]
    out: dict[str, Any] = {
        "offered_cps": offered,
        "attempted": len(setups),
        "failed": len(setups) - len(ok),
        "errors": sorted({s.error for s in setups if not s.ok})[:5],
        "elapsed_s": round(elapsed, 3),
        "achieved_cps": round(len(ok) / elapsed, 2) if elapsed > 0 else None,
    }
    for name in ("connect_ms", "invite_ms", "answered_ms", "dtls_ms", "media_ms"):
        values = [v for s in ok if (v := getattr(s, name)) is not None]
        out[name] = {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}
    return out


class Callers:
    """Who places the next call: always CALLER (warm), or a fresh extension each time (cold)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.next = COLD_FIRST

    def __call__(self) -> str:
        if self.kind == "warm":
            return CALLER
        self.next += 1
        return str(self.next - 1)


def log_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except OSError:
        return 0


def cold_count(args: argparse.Namespace) -> int:
    """How many distinct callers one cold pass uses (warm-up, serial, every open-loop step)."""
    return int(1 + args.serial + sum(max(1, round(rate * args.seconds)) for rate in args.rates))


def bench_table(scrypt_n: int, cold: int) -> ExtensionTable:
    """CALLER, PHONE and `cold` callers sharing CALLER_PASSWORD (one scrypt computed, not `cold`)."""
    realm = "mccp-bridge"
    caller = make_extension(CALLER, CALLER_PASSWORD, realm=realm, n=scrypt_n)
    entries = [caller, make_extension(PHONE, PHONE_PASSWORD, realm=realm, n=scrypt_n)]
    for k in range(cold):
        number = str(COLD_FIRST + k)
        ha1 = {a: digest_ha1(a, number, realm, CALLER_PASSWORD) for a in ("MD5", "SHA-256")}
        entries.append(Extension(number, caller.scrypt, realm, ha1["MD5"], ha1["SHA-256"]))
    return ExtensionTable(tuple(entries))


def category(frames: list[str]) -> str:
    """The name of a sampled stack's category (frames outermost first; see ANYWHERE, INNERMOST)."""
    for name, marks in ANYWHERE:
        if any(mark in frame for frame in frames for mark in marks):
            return name
    for frame in reversed(frames):
        for name, marks in INNERMOST:
            if any(mark in frame for mark in marks):
                return name
    return "other"


async def start_profile(pid: int, out: Path, rate: int = PROFILE_RATE, native: bool = False) -> trio.Process:
    """py-spy (sampling, non-blocking, idle threads left out) on the bridge until SIGINT; stacks to
    `out`. With `native`, C frames too (OpenSSL, libsrtp, the interpreter), pausing the bridge per
    sample."""
    exe = Path(sys.executable).parent / "py-spy"
    # --native needs the target paused while its stack is read (py-spy refuses --nonblocking)
    mode = "--native" if native else "--nonblocking"
    cmd = [str(exe) if exe.exists() else "py-spy", "record", mode, "--format", "raw"]
    cmd += ["-r", str(rate), "-p", str(pid), "-o", str(out)]
    proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await trio.sleep(1.0)  # py-spy attaches
    return proc


async def finish_profile(
    proc: trio.Process, out: Path, calls: int, cpu_ms_per_call: float = 0.0, rate: int = PROFILE_RATE
) -> dict[str, Any]:
    """Stop py-spy; top functions in ms of CPU per completed call: own samples and inclusive samples."""
    proc.send_signal(signal.SIGINT)
    with trio.move_on_after(30):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    kinds: dict[str, int] = {}
    total = idle = 0
    try:
        lines = out.read_text().splitlines()
    except OSError:
        return {"error": "no py-spy output"}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [FRAME.sub(r"\1 (\2)", f.strip()) for f in stack.split(";") if f.strip()]
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
            if frames[-1].startswith(IDLE_LEAVES):
                idle += count
            else:
                kind = category(frames)
                kinds[kind] = kinds.get(kind, 0) + count
        for frame in set(frames):
            incl[frame] = incl.get(frame, 0) + count
    per_call = 1000 / rate / max(1, calls)

    def top(table: dict[str, int], n: int) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:n]
        return [(k, round(v * per_call, 3)) for k, v in ranked]

    busy = total - idle
    # py-spy counts a thread that waits for the CPU or the GIL as busy: the categories are also
    # given scaled to the CPU time measured (/proc) over the same calls.
    scale = cpu_ms_per_call / (busy * per_call) if busy and cpu_ms_per_call else 1.0
    ranked = sorted(kinds.items(), key=lambda kv: -kv[1])
    return {
        "stacks": str(out),
        "calls": calls,
        "samples": total,
        "idle_samples": idle,
        "cpu_ms_per_call": round(busy * per_call, 2),
        "categories_ms_per_call": [(k, round(v * per_call, 3)) for k, v in ranked],
        "categories_scaled_ms_per_call": [(k, round(v * per_call * scale, 3)) for k, v in ranked],
        "own_ms_per_call": top(own, 40),
        "inclusive_ms_per_call": top(incl, 80),
    }


async def run_kind(
    args: argparse.Namespace,
    bridge: Any,
    bsock: BrowserSocket,
    phone: Phone,
    firsts: FirstPackets,
    kind: str,
    profile: Path | None,
) -> dict[str, Any]:
    """Warm-up, the serial calls, then the open-loop steps, for one kind of callers."""
    callers = Callers(kind)
    label = f"scrypt n={args.current_n} {kind}"
    result: dict[str, Any] = {"scrypt_n": args.current_n, "callers": kind}
    # warm-up: the first call pays for imports and caches (and, warm, fills the credentials cache)
    await one_call(bridge.wss_port, bsock, phone, firsts, -1, callers())
    setups: list[Setup] = []
    profiler = (
        await start_profile(bridge.pid, profile, args.profile_rate, args.profile_native)
        if profile is not None
        else None
    )
    lines0 = log_lines(bridge.log)
    t0 = trio.current_time()
    cpu0 = cpu_seconds(bridge.pid)
    for i in range(args.serial):
        setups.append(await one_call(bridge.wss_port, bsock, phone, firsts, i, callers()))
    result["serial"] = summary(setups, trio.current_time() - t0, None)
    # The bridge's CPU per call (set-up, one packet, hang-up), all threads (scrypt runs in
    # worker threads): 1000 / this is the calls/s one core could sustain.
    result["serial"]["bridge_cpu_ms_per_call"] = round(
        1000 * (cpu_seconds(bridge.pid) - cpu0) / max(1, args.serial), 2
    )
    # the bridge's log records per call at --log-level (each costs formatting and a write)
    result["serial"]["log_lines_per_call"] = round((log_lines(bridge.log) - lines0) / max(1, args.serial), 2)
    if profiler is not None and profile is not None:
        result["serial"]["profile"] = await finish_profile(
            profiler, profile, args.serial, result["serial"]["bridge_cpu_ms_per_call"], args.profile_rate
        )
    shown = {k: v for k, v in result["serial"].items() if k != "profile"}
    print(f"{label} serial: {json.dumps(shown)}", flush=True)
    result["open_loop"] = []
    for rate in args.rates:
        cpu0 = cpu_seconds(bridge.pid)
        own0 = cpu_seconds(os.getpid())
        setups = []
        number = 0
        t0 = trio.current_time()
        async with trio.open_nursery() as load:

            async def place(n: int, caller: str, setups: list[Setup] = setups) -> None:
                setups.append(await one_call(bridge.wss_port, bsock, phone, firsts, n, caller))

            count = max(1, round(rate * args.seconds))
            for k in range(count):
                await trio.sleep_until(t0 + k / rate)
                load.start_soon(place, number, callers())
                number += 1
        elapsed = trio.current_time() - t0
        row = summary(setups, elapsed, rate)
        bridge_cpu = cpu_seconds(bridge.pid) - cpu0
        row["bridge_cpu_pct"] = round(100 * bridge_cpu / elapsed, 1)
        row["bridge_cpu_ms_per_call"] = round(1000 * bridge_cpu / max(1, len(setups) - row["failed"]), 2)
        row["harness_cpu_pct"] = round(100 * (cpu_seconds(os.getpid()) - own0) / elapsed, 1)
        result["open_loop"].append(row)
        print(f"{label} offered {rate}/s: {json.dumps(row)}", flush=True)
        await trio.sleep(1.0)
    return result


async def run_one_bridge(args: argparse.Namespace, scrypt_n: int, stamp: str) -> list[dict[str, Any]]:
    """One bridge with this scrypt cost; one result per kind of callers (bench.table: one row each)."""
    args.current_n = scrypt_n
    bsock = await BrowserSocket.open()
    phone_rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await phone_rtp.bind(("127.0.0.1", 0))
    phone = await Phone.open(int(phone_rtp.getsockname()[1]), PHONE)
    firsts = FirstPackets(phone_rtp)
    results: list[dict[str, Any]] = []
    cold = cold_count(args) if "cold" in args.callers else 0
    async with trio.open_nursery() as root:
        root.start_soon(bsock.run)
        root.start_soon(firsts.run)
        async with run_bridge(scrypt_n=scrypt_n, nice=args.nice, log_level=args.log_level) as bridge:
            if cold:
                # the cold callers: the bridge re-reads its extensions on SIGHUP
                save_extensions(bridge.log.parent / "extensions.toml", bench_table(scrypt_n, cold))
                bridge.proc.send_signal(signal.SIGHUP)
                await trio.sleep(1.0)
            await phone.register(("127.0.0.1", bridge.sip_port), PHONE_PASSWORD)
            root.start_soon(phone.serve)
            for i, kind in enumerate(args.callers):
                profile = None
                if args.profile and i == 0:
                    out = args.out or RESULTS / f"setup-{stamp}.json"
                    profile = out.with_name(f"{out.stem}-n{scrypt_n}-{kind}.pyspy.txt")
                    profile.parent.mkdir(parents=True, exist_ok=True)
                results.append(await run_kind(args, bridge, bsock, phone, firsts, kind, profile))
        root.cancel_scope.cancel()
    for sock in (bsock.sock, phone_rtp, phone.sock):
        sock.close()
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host = machine()
    pin_harness(args.nice)
    record: dict[str, Any] = {
        "kind": "setup",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": host,
        # which scrypt the bridge computes a cold login with (bridge.extensions: libsodium when
        # PyNaCl is installed, else OpenSSL's; the same venv as this harness)
        "scrypt_implementation": SCRYPT_IMPLEMENTATION,
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "stamp", "current_n")},
        "bridges": [],
    }
    for n in args.scrypt_n:
        record["bridges"] += await run_one_bridge(args, n, args.stamp)
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serial", type=int, default=50)
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",") if x], default=[5, 10, 20, 40])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--scrypt-n", type=lambda s: [int(x) for x in s.split(",")], default=[2**10, 2**14])
    ap.add_argument(
        "--callers",
        type=lambda s: s.split(","),
        default=["warm", "cold"],
        help="warm: one caller redials (credentials cache); cold: a new caller per call (scrypt each)",
    )
    ap.add_argument("--profile", action="store_true", help="py-spy the bridge during the serial calls")
    ap.add_argument("--profile-rate", type=int, default=PROFILE_RATE, help="py-spy samples per second")
    ap.add_argument("--profile-native", action="store_true", help="py-spy --native: C frames too")
    ap.add_argument("--log-level", default="warning", help="the bridge's --log-level (info: per-call logs)")
    ap.add_argument("--nice", type=int, default=-20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (0 <= args.serial <= 1000 and 0 < args.seconds <= 30 and all(0 < r <= 500 for r in args.rates)):
        ap.error("bounds: serial <= 1000, seconds <= 30, rates <= 500/s")
    if not args.callers or not set(args.callers) <= {"warm", "cold"}:
        ap.error("--callers: warm, cold or warm,cold")
    args.stamp = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    # browser_leg builds a client SSLContext per call, which loads the system CA store: ~100 ms of the
    # harness's CPU per call (more than the bridge's whole set-up), the open loop's limit. A browser
    # does not do that: one context for every call.
    browser_leg.client_ssl_context = functools.cache(browser_leg.client_ssl_context)
    record = trio.run(run, args)
    out = args.out or RESULTS / f"setup-{args.stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written {out}")
    return out


if __name__ == "__main__":
    main()


__all__ = ["Setup", "asdict", "main"]
