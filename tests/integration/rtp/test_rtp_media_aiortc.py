"""rtp.media against aiortc, an independent WebRTC implementation (full ICE agent, controlling;
DTLS client; SRTP), run as a subprocess. The SIP side is a plain RTP socket in the test.

aiortc plays 440 Hz and must be heard on the SIP side; the SIP side plays 1 kHz and aiortc must
hear it. Run inside the loopback-only namespace (scripts/netns_run.sh), like all peer tests.
"""

from __future__ import annotations

import json
import math
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
from rtp.dtls import DtlsCertificate
from rtp.media import open_media
from rtp.plane import open_media_plane
from rtp.ports import PortAllocator

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


def sip_answer(port: int, rtcp_port: int, codec: str) -> str:
    """What a phone answers to the bridge's RTP/AVP offer: one G.711 codec + telephone-event."""
    pt = {"PCMU": 0, "PCMA": 8}[codec]
    return (
        "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {codec}/8000\r\n"
        f"a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=rtcp:{rtcp_port}\r\na=sendrecv\r\n"
    )


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


@pytest.mark.parametrize(
    ("browser_codec", "sip_codec"), [("PCMU", "PCMU"), ("PCMA", "PCMA"), ("PCMU", "PCMA")]
)
async def test_aiortc_call_audio_both_ways(browser_codec: str, sip_codec: str) -> None:
    """aiortc offers one codec; the phone answers the bridge's SIP offer with `sip_codec`
    (PCMU -> PCMA exercises the relay's transcoding)."""
    seconds = 2.0
    sip_pt = {"PCMU": 0, "PCMA": 8}[sip_codec]
    ports = PortAllocator(41000, 41099, "127.0.0.1")
    with trio.fail_after(30):
        phone, phone_rtcp = await udp(), await udp()
        with phone, phone_rtcp:
            args = ("--tone", "440", "--seconds", str(seconds), "--codec", browser_codec)
            async with (
                open_media_plane() as plane,
                webrtc_peer(*args) as (proc, out),
                trio.open_nursery() as call,
            ):
                offer = await out.next()
                assert offer["type"] == "offer"
                t0 = trio.current_time()
                async with open_media(
                    ports,
                    offer["sdp"],
                    advertise_hosts=["127.0.0.1"],
                    sip_host="127.0.0.1",
                    certificate=CERT,
                    plane=plane,
                ) as media:
                    assert "a=ice-lite" in media.browser_answer
                    assert "RTP/AVP" in media.sip_offer
                    assert proc.stdin is not None
                    answer = json.dumps({"type": "answer", "sdp": media.browser_answer})
                    await proc.stdin.send_all(answer.encode() + b"\n")
                    heard: list[bytes] = []

                    async def phone_listen() -> None:
                        while True:
                            data, _ = await phone.recvfrom(2048)
                            if data[1] & 0x7F == sip_pt:
                                heard.append(data[12:])

                    await call.start(media.run_ice_dtls)
                    dtls_s = trio.current_time() - t0
                    call.start_soon(media.run_relay)
                    call.start_soon(phone_listen)
                    # the phone's answer (a 183 with early media, say) arrives while media runs
                    media.set_sip_answer(
                        sip_answer(phone.getsockname()[1], phone_rtcp.getsockname()[1], sip_codec)
                    )
                    assert (await out.next())["type"] == "connected"
                    sip_rtp_port = int(media.sip_offer.split("m=audio ")[1].split()[0])
                    sent = await play_tone(phone, ("127.0.0.1", sip_rtp_port), 1000.0, seconds, sip_pt)
                    report = await out.next()
                    stats = media.stats()
                    call.cancel_scope.cancel()
        assert report["type"] == "report"
        assert report["ok"], report
        assert not ports.in_use  # the three leases were given back
        decode = g711.decode_ulaw if sip_pt == 0 else g711.decode_alaw
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
        assert stats.to_sip.rtcp_packets >= 1  # aiortc's SRTCP reports reached the SIP side
        assert stats.ice.checks_ok >= 1
        assert stats.selected is not None
        assert dtls_s < 5
        print(
            f"{browser_codec}->{sip_codec}: offer->DTLS {dtls_s * 1000:.0f} ms; aiortc heard "
            f"{report['freq']:.0f} Hz ({report['frames']} frames, {report['dbfs']:.0f} dBFS), "
            f"SIP side heard {sip_side.freq:.0f} Hz ({len(heard)} packets)"
        )
