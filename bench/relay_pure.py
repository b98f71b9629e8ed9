"""Benchmark: the relay's pure per-packet cost, sockets left out.

browser -> SIP: SRTP unprotect -> RTP check -> payload type map (-> transcode), as `Relay.browser_rtp`.
SIP -> browser: in-place SSRC/seq/ts/PT rewrite -> SRTP protect, as `Relay.sip_rtp`.
Both DTLS-SRTP profiles, 172-byte G.711 packets (20 ms), compared with bare pylibsrtp calls.

Usage: .venv/bin/python bench/relay_pure.py [N] [REPS]   (default 50000 packets, best of 3)
Prints microseconds of CPU per packet and packets per second of one core.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial

import pylibsrtp

from rtp import g711
from rtp.packet import RtpPacket
from rtp.relay import CodecMap, PtRoute, Relay, Transcode
from rtp.srtp import SrtpProfile, SrtpRx, SrtpTx

PAYLOAD = g711.encode_ulaw(round(8000 * ((i % 20) - 10) / 10) for i in range(160))
SAME = CodecMap(to_sip={0: PtRoute(0), 126: PtRoute(101)}, to_browser={0: PtRoute(0), 101: PtRoute(126)})
TRANSCODE = CodecMap(to_sip={0: PtRoute(8, Transcode.ULAW_TO_ALAW)}, to_browser={8: PtRoute(8)})


def _keys(profile: SrtpProfile) -> tuple[bytes, bytes]:
    n = profile.key_length + profile.salt_length
    return bytes(range(n)), bytes(range(50, 50 + n))


def _relay(profile: SrtpProfile, cmap: CodecMap) -> Relay:
    browser_key, our_key = _keys(profile)
    return Relay(
        cmap,
        ssrc=0x0BEEF000,
        initial_sequence=1,
        initial_timestamp=1,
        srtp_tx=SrtpTx(profile, our_key),
        srtp_rx=SrtpRx(profile, browser_key),
    )


def _rtp(i: int, pt: int = 0) -> bytes:
    return RtpPacket(pt, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0x12345678, PAYLOAD).serialize()


def _browser_srtp(profile: SrtpProfile, n: int, pt: int) -> list[bytes]:
    tx = SrtpTx(profile, _keys(profile)[0])
    return [tx.protect(_rtp(i, pt)) for i in range(1, n + 1)]


def _measure(n: int, reps: int, setup: Callable[[], Callable[[], None]]) -> float:
    """Best CPU seconds per packet over `reps` runs of a fresh `setup()` loop."""
    best = float("inf")
    for _ in range(reps):
        loop = setup()
        start = time.process_time()
        loop()
        best = min(best, (time.process_time() - start) / n)
    return best


def _browser_to_sip(profile: SrtpProfile, cmap: CodecMap, packets: list[bytes]) -> Callable[[], None]:
    relay = _relay(profile, cmap)

    def loop() -> None:
        f = relay.browser_rtp
        for p in packets:
            if f(p, 0.0) is None:
                raise AssertionError("packet dropped")

    return loop


def _sip_to_browser(profile: SrtpProfile, n: int) -> Callable[[], None]:
    relay = _relay(profile, SAME)
    bufs = [bytearray(_rtp(i)) for i in range(1, n + 1)]

    def loop() -> None:
        f = relay.sip_rtp
        for b in bufs:
            if f(b, 0.0) is None:
                raise AssertionError("packet dropped")

    return loop


def _bare(profile: SrtpProfile, key: bytes, packets: list[bytes], *, protect: bool) -> Callable[[], None]:
    ssrc_type = pylibsrtp.Policy.SSRC_ANY_OUTBOUND if protect else pylibsrtp.Policy.SSRC_ANY_INBOUND
    session = pylibsrtp.Session(
        policy=pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile._libsrtp_profile)
    )
    op = session.protect if protect else session.unprotect

    def loop() -> None:
        for p in packets:
            op(p)

    return loop


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rows: list[tuple[str, str, float]] = []
    for profile in SrtpProfile:
        for label, cmap, pt in (
            ("browser->SIP, PCMU as is (no copy)", SAME, 0),
            ("browser->SIP, DTMF PT 126->101 (one copy)", SAME, 126),
            ("browser->SIP, PCMU->PCMA transcode", TRANSCODE, 0),
        ):
            packets = _browser_srtp(profile, n, pt)
            rows.append(
                (profile.name, label, _measure(n, reps, partial(_browser_to_sip, profile, cmap, packets)))
            )
        rows.append(
            (
                profile.name,
                "SIP->browser, rewrite + protect",
                _measure(n, reps, partial(_sip_to_browser, profile, n)),
            )
        )
        browser_key, our_key = _keys(profile)
        srtp_packets = _browser_srtp(profile, n, 0)
        plain_packets = [_rtp(i) for i in range(1, n + 1)]
        unprotect = partial(_bare, profile, browser_key, srtp_packets, protect=False)
        protect = partial(_bare, profile, our_key, plain_packets, protect=True)
        rows.append((profile.name, "bare pylibsrtp unprotect", _measure(n, reps, unprotect)))
        rows.append((profile.name, "bare pylibsrtp protect", _measure(n, reps, protect)))

    print(f"relay_pure: {n} packets x best of {reps}, 172-byte RTP (G.711 20 ms), CPU time")
    print(f"| {'profile':<24} | {'path':<42} | {'us/packet':>9} | {'kpps/core':>9} |")
    print(f"|{'-' * 26}|{'-' * 44}|{'-' * 11}|{'-' * 11}|")
    for profile_name, label, seconds in rows:
        print(f"| {profile_name:<24} | {label:<42} | {seconds * 1e6:>9.2f} | {1e-3 / seconds:>9.0f} |")


if __name__ == "__main__":
    main()
