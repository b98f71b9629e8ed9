"""Benchmark: parse a typical INVITE with SDP N times (datagram parser plus the typed accessors).

Usage: .venv/bin/python bench/sip_parser.py [N]   -> prints messages/s for parse, parse+accessors
and serialize, measured in process CPU time (robust on a shared machine).
"""

from __future__ import annotations

import sys
import time

from sip.message import Request
from sip.parser import parse_datagram_untrusted

SDP = (
    b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
)
INVITE = (
    b"INVITE sip:101@127.0.0.1 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-524287-1---a1b2c3d4e5f6\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:127.0.0.1:5070;lr>\r\n"
    b'From: "Caller 100" <sip:100@127.0.0.1>;tag=8f3a9c21\r\n'
    b"To: <sip:101@127.0.0.1>\r\n"
    b"Call-ID: 3c26700b5f8a4f8e9b1d@192.0.2.10\r\n"
    b"CSeq: 2 INVITE\r\n"
    b"Contact: <sip:100@192.0.2.10:5060;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n"
    b"Supported: replaces, timer\r\n"
    b'Proxy-Authorization: Digest username="100", realm="127.0.0.1", nonce="Y2xhc3MgZm9v", '
    b'uri="sip:101@127.0.0.1", response="0123456789abcdef0123456789abcdef", algorithm=MD5, '
    b'cnonce="abcdef", qop=auth, nc=00000001\r\n'
    b"User-Agent: mccp-bridge 0.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: %d\r\n\r\n" % len(SDP)
) + SDP


def _rate(label: str, n: int, func: object) -> float:
    assert callable(func)
    # CPU time of this process: the machine is shared, wall time would measure the neighbours.
    start = time.process_time()
    for _ in range(n):
        func()
    elapsed = time.process_time() - start
    rate = n / elapsed
    print(f"{label:<34} {rate:>10,.0f} messages/s  ({elapsed / n * 1e6:.1f} us each)")
    return rate


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    msg = parse_datagram_untrusted(INVITE)
    assert isinstance(msg, Request)
    print(f"INVITE with SDP: {len(INVITE)} bytes, {len(msg.headers)} header fields, N={n}")
    _rate("parse_datagram_untrusted", n, lambda: parse_datagram_untrusted(INVITE))

    def with_accessors() -> None:
        m = parse_datagram_untrusted(INVITE)
        assert isinstance(m, Request)
        _ = (m.top_via.branch, m.cseq, m.call_id, m.from_.tag, m.to.tag, m.contacts)

    _rate("parse + typed accessors", n, with_accessors)
    _rate("serialize bytes(msg)", n, lambda: bytes(msg))


if __name__ == "__main__":
    main()
