"""A garbage-datagram flooder, run as a subprocess so it does not share the bridge's event loop.

    python -m tests.hostile.flood --source 127.0.0.30 --rate 8000 --seconds 3 127.0.0.1:31000-31099 ...

Each target is host:port or host:low-high. Datagrams cycle through shapes that reach every branch of
the media demultiplexer and the SIP parser: random bytes, STUN-looking (first byte 0-3, magic
cookie), DTLS-looking records (content type 20-23, version FE FD), RTP and RTCP headers with random
bodies, and SIP-looking text. Paced in batches to `rate` datagrams/s; prints one JSON line with
what was sent. Bounded by `seconds`; exits by itself.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import time


def shapes(rng: random.Random) -> list[bytes]:
    """A pool of garbage datagrams, one of each kind per round."""
    pool = []
    for _ in range(64):
        body = rng.randbytes(rng.randint(0, 300))
        pool += [
            body,
            bytes([rng.randint(0, 3), 1])
            + rng.randbytes(2)
            + b"\x21\x12\xa4\x42"
            + rng.randbytes(12)
            + body[:40],
            bytes([rng.randint(20, 23), 0xFE, 0xFD]) + rng.randbytes(10) + body,
            bytes([0x80, rng.choice([0, 8, 101, 126, 0x80])]) + rng.randbytes(10) + body,
            bytes([0x80 | rng.randint(0, 31), rng.randint(192, 223)]) + rng.randbytes(6) + body,
            b"INVITE sip:600@127.0.0.1 SIP/2.0\r\nVia: " + body[:60] + b"\r\n\r\n",
        ]
    return pool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="127.0.0.30")
    parser.add_argument("--rate", type=int, default=8000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()
    dests: list[tuple[str, int]] = []
    for target in args.targets:
        host, _, ports = target.rpartition(":")
        low, _, high = ports.partition("-")
        dests += [(host, p) for p in range(int(low), int(high or low) + 1)]
    rng = random.Random(args.seed)
    pool = shapes(rng)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((args.source, 0))
    sock.setblocking(False)
    sent = refused = 0
    batch = 100
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < args.seconds:
        for _ in range(batch):
            try:
                sock.sendto(pool[i % len(pool)], dests[i % len(dests)])
                sent += 1
            except OSError:  # ICMP port unreachable reported on a later send, or a full buffer
                refused += 1
            i += 1
        ahead = start + sent / args.rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    elapsed = time.monotonic() - start
    print(
        json.dumps(
            {"sent": sent, "errors": refused, "seconds": round(elapsed, 3), "rate": round(sent / elapsed)}
        )
    )


if __name__ == "__main__":
    main()
