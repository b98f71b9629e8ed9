"""Call set-up benchmark: set-up latency and calls per second through the real bridge.

    .venv/bin/python -m bench.setup [--serial 50] [--rates 5,10,20,40] [--seconds 5]
                                    [--scrypt-n 1024,16384] [--out bench/results/x.json]

Each call goes through the whole real signalling (bench.calls): MCCP `call` over WSS -> the caller's
password checked (scrypt) -> SIP INVITE at the phone registered to the bridge -> 200 OK/ACK ->
MCCP `answer`; ICE check and DTLS -> SRTP keys; then ONE SRTP packet from the browser side, timed
until it arrives as plain RTP at the phone: "first packet relayed". Then the page hangs up (BYE).

* serial: one call at a time (latency without contention), `--serial` calls;
* open loop: calls started at `--rates` calls/s for `--seconds` each, whatever the bridge does;
  reports the achieved set-up rate (calls completed per second), latency percentiles and failures.

Both for each `--scrypt-n`: the bridge's default cost (2**14, ~60 ms of CPU per login, run in worker
threads) dominates a set-up, so the run also shows what the rest costs with a cheap hash (2**10).
The bridge runs on CPU 1, the harness on CPU 0, as in bench.relay.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio
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
from rtp.srtp import SrtpTx


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
    wss_port: int, bsock: BrowserSocket, phone: Phone, firsts: FirstPackets, number: int
) -> Setup:
    call = BrowserCall(number, ssrc=int.from_bytes(os.urandom(4), "big"))
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(run_call, bsock, call, wss_port, CALLER, CALLER_PASSWORD, PHONE)
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


async def run_one_bridge(args: argparse.Namespace, scrypt_n: int) -> dict[str, Any]:
    bsock = await BrowserSocket.open()
    phone_rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await phone_rtp.bind(("127.0.0.1", 0))
    phone = await Phone.open(int(phone_rtp.getsockname()[1]), PHONE)
    firsts = FirstPackets(phone_rtp)
    result: dict[str, Any] = {"scrypt_n": scrypt_n}
    async with trio.open_nursery() as root:
        root.start_soon(bsock.run)
        root.start_soon(firsts.run)
        async with run_bridge(scrypt_n=scrypt_n, nice=args.nice) as bridge:
            await phone.register(("127.0.0.1", bridge.sip_port), PHONE_PASSWORD)
            root.start_soon(phone.serve)
            # warm-up: the first call pays for imports and caches
            await one_call(bridge.wss_port, bsock, phone, firsts, -1)
            setups: list[Setup] = []
            t0 = trio.current_time()
            cpu0 = cpu_seconds(bridge.pid)
            for i in range(args.serial):
                setups.append(await one_call(bridge.wss_port, bsock, phone, firsts, i))
            result["serial"] = summary(setups, trio.current_time() - t0, None)
            # The bridge's CPU per call (set-up, one packet, hang-up), all threads (scrypt runs in
            # worker threads): 1000 / this is the calls/s one core could sustain.
            result["serial"]["bridge_cpu_ms_per_call"] = round(
                1000 * (cpu_seconds(bridge.pid) - cpu0) / max(1, args.serial), 2
            )
            print(f"scrypt n={scrypt_n} serial: {json.dumps(result['serial'])}", flush=True)
            result["open_loop"] = []
            for rate in args.rates:
                cpu0 = cpu_seconds(bridge.pid)
                own0 = cpu_seconds(os.getpid())
                setups = []
                number = 0
                t0 = trio.current_time()
                async with trio.open_nursery() as load:

                    async def place(n: int, setups: list[Setup] = setups) -> None:
                        setups.append(await one_call(bridge.wss_port, bsock, phone, firsts, n))

                    count = max(1, round(rate * args.seconds))
                    for k in range(count):
                        await trio.sleep_until(t0 + k / rate)
                        load.start_soon(place, number)
                        number += 1
                elapsed = trio.current_time() - t0
                row = summary(setups, elapsed, rate)
                row["bridge_cpu_pct"] = round(100 * (cpu_seconds(bridge.pid) - cpu0) / elapsed, 1)
                row["harness_cpu_pct"] = round(100 * (cpu_seconds(os.getpid()) - own0) / elapsed, 1)
                result["open_loop"].append(row)
                print(f"scrypt n={scrypt_n} offered {rate}/s: {json.dumps(row)}", flush=True)
                await trio.sleep(1.0)
        root.cancel_scope.cancel()
    for sock in (bsock.sock, phone_rtp, phone.sock):
        sock.close()
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host = machine()
    pin_harness(args.nice)
    record: dict[str, Any] = {
        "kind": "setup",
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": host,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "bridges": [],
    }
    for n in args.scrypt_n:
        record["bridges"].append(await run_one_bridge(args, n))
    return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serial", type=int, default=50)
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[5, 10, 20, 40])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--scrypt-n", type=lambda s: [int(x) for x in s.split(",")], default=[2**10, 2**14])
    ap.add_argument("--nice", type=int, default=-20)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (0 <= args.serial <= 1000 and 0 < args.seconds <= 30 and all(0 < r <= 500 for r in args.rates)):
        ap.error("bounds: serial <= 1000, seconds <= 30, rates <= 500/s")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    record = trio.run(run, args)
    out = args.out or RESULTS / f"setup-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written {out}")
    return out


if __name__ == "__main__":
    main()


__all__ = ["Setup", "asdict", "main"]
