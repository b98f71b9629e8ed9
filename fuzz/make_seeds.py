"""Write the seed corpora from the project's test vectors: `python -m fuzz.make_seeds`.

Seeds are named `seed-<sha1 prefix>`; existing files (seeds and crash reproducers) are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from fuzz.dtls_demux import CERT, frame
from rtp.dtls import DtlsEndpoint, DtlsRole
from rtp.packet import RtpPacket
from rtp.sdp_answer import answer_browser_offer, offer_for_sip
from rtp.stun import binding_request, binding_success

CORPUS = Path(__file__).parent / "corpus"
DATA = Path(__file__).parents[1] / "tests" / "unit" / "rtp" / "data"


def write(target: str, seeds: Iterable[bytes]) -> int:
    """Store each seed under fuzz/corpus/<target>/ by content hash; return how many are new."""
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    new = 0
    for seed in seeds:
        path = folder / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}"
        if not path.exists():
            path.write_bytes(seed)
            new += 1
    return new


def recorded_raw_messages(module: object) -> list[bytes]:
    """Every message a test module builds with its `raw()` helper, by running its plain tests."""
    out: list[bytes] = []
    original: Callable[..., bytes] = module.raw  # type: ignore[attr-defined]

    def recording(*args: object, **kwargs: object) -> bytes:
        data = original(*args, **kwargs)
        out.append(data)
        return data

    module.raw = recording  # type: ignore[attr-defined]
    try:
        for name, fn in vars(module).items():
            if name.startswith("test_") and callable(fn) and not inspect.signature(fn).parameters:
                with contextlib.suppress(Exception):
                    fn()
    finally:
        module.raw = original  # type: ignore[attr-defined]
    return out


def sip_seeds() -> list[bytes]:
    from tests.unit.sip import test_sip_parser, test_sip_torture

    seeds = [test_sip_parser.F1, test_sip_parser.F9, test_sip_parser.REGISTER_401, test_sip_torture.WSINV]
    seeds += recorded_raw_messages(test_sip_torture)
    seeds.append(
        b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:100@127.0.0.1>;tag=a\r\nTo: <sip:100@127.0.0.1>\r\n"
        b"Call-ID: reg1\r\nCSeq: 2 REGISTER\r\nContact: <sip:100@127.0.0.1:5070>;expires=60\r\n"
        b'Authorization: Digest username="100", realm="mccp-bridge", nonce="abc", '
        b'uri="sip:127.0.0.1", response="0123456789abcdef0123456789abcdef", algorithm=SHA-256, '
        b'qop=auth, nc=00000001, cnonce="x"\r\nContent-Length: 0\r\n\r\n'
    )
    return seeds


def mccp_seeds() -> list[bytes]:
    sdp = (DATA / "offer_chromium156.sdp").read_text()
    call = {"type": "call", "clr": "100", "pwd": "secret", "cld": "600", "sdp": sdp}
    frames = [
        json.dumps(call),
        json.dumps({"type": "dtmf", "digits": "123#"}),
        json.dumps({"type": "hangup"}),
        json.dumps({"type": "ping", "v": 1}),
        json.dumps({"type": "call", "v": 2}),
        '{"type": "dtmf", "digits": "\\ud800"}',
        "[" * 50 + "]" * 50,
        '{"type": 1e999}',
    ]
    return [f.encode() for f in frames] + [b"\0".join(f.encode() for f in frames[:4])]


def sdp_seeds() -> list[bytes]:
    offers = [p.read_bytes() for p in sorted(DATA.glob("*.sdp"))]
    ours = offer_for_sip(host="127.0.0.1", rtp_port=30000, session_id=2)
    answer, _ = answer_browser_offer(
        offers[0],
        ice_ufrag="abcd",
        ice_pwd="0123456789012345678901",
        fingerprint_sha256=":".join(["AB"] * 32),
        candidates=[("127.0.0.1", 20000)],
        session_id=1,
    )
    sip_answer = (
        b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
        b"a=rtcp:4001 IN IP4 127.0.0.1\r\na=sendonly\r\n"
    )
    return [*offers, ours.encode(), answer.encode(), sip_answer]


def stun_seeds() -> list[bytes]:
    from tests.unit.rtp import test_rtp_ice_stun as v

    tid = bytes(range(12))
    check = binding_request(
        tid, username="evtj:h6vY", key=v.PASSWORD, priority=1, ice_controlling=42, use_candidate=True
    )
    controlled = binding_request(tid, username="evtj:h6vY", key=v.PASSWORD, priority=1, ice_controlled=7)
    return [
        v.SAMPLE_REQUEST,
        v.SAMPLE_IPV4_RESPONSE,
        v.SAMPLE_IPV6_RESPONSE,
        check,
        controlled,
        binding_success(tid, ("127.0.0.1", 40000), v.PASSWORD),
    ]


def dtls_seeds() -> list[bytes]:
    from tests.unit.rtp.test_rtp_dtls import GARBAGE

    fp = ("sha-256", ":".join(["AB"] * 32))
    client = DtlsEndpoint(DtlsRole.CLIENT, CERT, fp)
    server = DtlsEndpoint(DtlsRole.SERVER, CERT, fp)
    client.start(0.0)
    hello = client.outgoing()
    for gram in hello:
        server.feed_untrusted(gram, 0.0)
    flight = server.outgoing()
    return [frame(*hello), frame(*flight), frame(*hello, *GARBAGE), *(frame(g) for g in GARBAGE)]


def rtp_seeds() -> list[bytes]:
    from tests.unit.rtp import test_rtp_rtcp as r

    rtp = [
        RtpPacket(0, 1, 160, 7, b"\xff" * 160).serialize(),
        RtpPacket(8, 2, 320, 7, b"\xd5" * 160, marker=True).serialize(),
        RtpPacket(101, 3, 320, 7, bytes.fromhex("0a0a00a0")).serialize(),
        RtpPacket(126, 4, 480, 9, bytes.fromhex("018a0140"), csrcs=(1, 2)).serialize(),
        RtpPacket(0, 5, 640, 7, b"\x7f" * 20, extension=(0xBEDE, bytes(8)), padding=4).serialize(),
    ]
    rtcp = [
        r._sr(r.SIP_SSRC, 1000, [r.OUR_SSRC]) + r._sdes(r.SIP_SSRC, b"phone"),
        r._rr(r.BROWSER_SSRC, [r.OUR_SSRC]),
        r._bye(r.SIP_SSRC),
    ]
    grams = [bytes([path]) + p for p in rtp for path in range(4)]
    grams += [bytes([path]) + p for p in rtcp for path in range(4)]
    return [frame(*grams), *(frame(g) for g in grams), frame(*(b"\x02" + p for p in rtp))]


def main() -> None:
    """Write every target's seeds and say how many were new."""
    os.chdir(Path(__file__).parents[1])
    seeds = {
        "mccp_json": mccp_seeds(),
        "sip_datagram": sip_seeds(),
        "sip_stream": [b"\x05" + m for m in sip_seeds()] + [b"\x00" + b"\r\n\r\n".join(sip_seeds()[:3])],
        "sdp": sdp_seeds(),
        "stun_ice": stun_seeds(),
        "dtls_demux": dtls_seeds(),
        "rtp_rtcp": rtp_seeds(),
    }
    for target, items in seeds.items():
        print(f"{target}: {write(target, items)} new of {len(items)}")


if __name__ == "__main__":
    main()
