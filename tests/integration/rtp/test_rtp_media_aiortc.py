"""rtp.media against aiortc, an independent WebRTC implementation (full ICE agent, controlling;
DTLS client; SRTP), run as a subprocess. The SIP side is a plain RTP socket in the test.

aiortc plays 440 Hz and must be heard on the SIP side; the SIP side plays 1 kHz and aiortc must
hear it. Run inside the loopback-only namespace (scripts/netns_run.sh), like all peer tests.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.support.audio import analyse

import trio
from rtp import g711
from rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole
from rtp.ice_lite import IceLiteAgent
from rtp.media import MediaSession, SipRemote
from rtp.relay import CodecMap, PtRoute

pytestmark = [pytest.mark.peers, pytest.mark.timeout(40)]

REPO = Path(__file__).resolve().parents[3]
CERT = DtlsCertificate.generate("bridge-test")


class Lines:
    """JSON lines from a subprocess's stdout."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError("webrtc_peer exited")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result


def offer_value(sdp: str, name: str) -> str:
    m = re.search(rf"^a={name}:(.+?)\r?$", sdp, re.M)
    assert m, f"offer has no a={name}"
    return m.group(1).strip()


def answer_for(offer: str, *, port: int, ufrag: str, pwd: str, pt: int, codec: str) -> str:
    """The ICE-lite, DTLS-passive answer the bridge gives a browser (built by hand here; the
    bridge builds it with rtp.sdp)."""
    mid = offer_value(offer, "mid")
    lines = [
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=ice-lite",
        f"a=group:BUNDLE {mid}",
        f"m=audio {port} UDP/TLS/RTP/SAVPF {pt}",
        "c=IN IP4 127.0.0.1",
        f"a=mid:{mid}",
        "a=sendrecv",
        "a=rtcp-mux",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:sha-256 {CERT.fingerprint_sha256}",
        "a=setup:passive",
        f"a=rtpmap:{pt} {codec}/8000",
        f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host",
        "a=end-of-candidates",
    ]
    return "\r\n".join(lines) + "\r\n"


async def udp() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def webrtc_peer(*args: str) -> AsyncIterator[tuple[trio.Process, Lines]]:
    cmd = [sys.executable, "-m", "tests.support.webrtc_peer", *args]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=REPO,
                check=False,
                task_status=task_status,
            )
        )
        assert proc.stdout is not None
        try:
            yield proc, Lines(proc.stdout)
        finally:
            proc.kill()


async def play_tone(
    sock: trio.socket.SocketType, dest: tuple[str, int], freq: float, seconds: float, law: int
) -> int:
    """Send a G.711 sine as 20 ms RTP packets, paced in real time; returns packets sent."""
    ssrc, seq0, ts0 = 0x5151, secrets.randbelow(1 << 16), secrets.randbelow(1 << 32)
    encode = g711.encode_ulaw if law == 0 else g711.encode_alaw
    n = int(seconds * 50)
    start = trio.current_time()
    for i in range(n):
        samples = [int(9000 * math.sin(2 * math.pi * freq * (160 * i + k) / 8000)) for k in range(160)]
        header = struct.pack("!BBHII", 0x80, law, (seq0 + i) & 0xFFFF, (ts0 + 160 * i) & 0xFFFFFFFF, ssrc)
        await sock.sendto(header + encode(samples), dest)
        await trio.sleep_until(start + (i + 1) * 0.02)
    return n


@pytest.mark.parametrize(("codec", "pt"), [("PCMU", 0), ("PCMA", 8)])
async def test_aiortc_call_audio_both_ways(codec: str, pt: int) -> None:
    seconds = 2.0
    routes = {pt: PtRoute(pt)}
    with trio.fail_after(30):
        bsock, srtp_sock, srtcp_sock, phone, phone_rtcp = [await udp() for _ in range(5)]
        with bsock, srtp_sock, srtcp_sock, phone, phone_rtcp:
            async with webrtc_peer("--tone", "440", "--seconds", str(seconds), "--codec", codec) as (
                proc,
                out,
            ):
                offer = await out.next()
                assert offer["type"] == "offer"
                sdp = offer["sdp"]
                alg, fingerprint = offer_value(sdp, "fingerprint").split()
                ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
                media = MediaSession(
                    browser_sock=bsock,
                    sip_rtp_sock=srtp_sock,
                    sip_rtcp_sock=srtcp_sock,
                    ice=IceLiteAgent(ufrag, pwd, offer_value(sdp, "ice-ufrag"), offer_value(sdp, "ice-pwd")),
                    dtls=DtlsEndpoint(DtlsRole.SERVER, CERT, (alg, fingerprint)),
                )
                try:
                    answer = answer_for(
                        sdp, port=bsock.getsockname()[1], ufrag=ufrag, pwd=pwd, pt=pt, codec=codec
                    )
                    assert proc.stdin is not None
                    await proc.stdin.send_all(json.dumps({"type": "answer", "sdp": answer}).encode() + b"\n")
                    heard: list[bytes] = []

                    async def phone_listen() -> None:
                        while True:
                            data, _ = await phone.recvfrom(2048)
                            if data[1] & 0x7F == pt:
                                heard.append(data[12:])

                    async with trio.open_nursery() as call:
                        t0 = trio.current_time()
                        await call.start(media.run_ice_dtls)
                        dtls_s = trio.current_time() - t0
                        call.start_soon(media.run_relay)
                        call.start_soon(phone_listen)
                        # the SIP answer (say a 183 with early media) arrives while media runs
                        media.set_sip_remote(
                            SipRemote(phone.getsockname(), phone_rtcp.getsockname(), CodecMap(routes, routes))
                        )
                        connected = await out.next()
                        assert connected["type"] == "connected"
                        sent = await play_tone(
                            phone, ("127.0.0.1", srtp_sock.getsockname()[1]), 1000.0, seconds, pt
                        )
                        report = await out.next()
                        call.cancel_scope.cancel()
                    assert report["type"] == "report"
                    assert report["ok"], report
                    stats = media.stats()
                finally:
                    media.close()
        decode = g711.decode_ulaw if pt == 0 else g711.decode_alaw
        pcm = np.array([s for payload in heard for s in decode(payload)], dtype=np.int16)
        sip_side = analyse(pcm[1600:], 8000)  # skip the first 200 ms
        # aiortc heard the SIP side's 1 kHz, the SIP side heard aiortc's 440 Hz
        assert report["frames"] >= 50
        assert report["freq"] == pytest.approx(1000, rel=0.03)
        assert report["dbfs"] > -30
        assert sip_side.has_tone(440, tolerance=0.03)
        assert len(heard) >= 50
        assert stats.to_browser.packets >= 0.9 * sent
        assert stats.to_sip.packets >= 50
        assert stats.to_sip.dropped_total == 0
        assert stats.ice.checks_ok >= 1
        assert stats.selected is not None
        assert dtls_s < 5
        print(
            f"{codec}: offer->DTLS {dtls_s * 1000:.0f} ms; aiortc heard {report['freq']:.0f} Hz "
            f"({report['frames']} frames), SIP side heard {sip_side.freq:.0f} Hz ({len(heard)} packets)"
        )
