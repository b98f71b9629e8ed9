"""lite.html makes a real WebRTC call: aiortc answers in place of the bridge's media side.

The page sends its offer before ICE gathering (as it must for the ICE-lite bridge), so aiortc
learns the browser's address from its checks (peer-reflexive). Audio must flow both ways: aiortc
decodes the browser's fake microphone, and ``window.__mccp.getStats()`` counts packets from
aiortc's tone. aiortc runs on its own asyncio loop in a thread; the test and server are Trio.
Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import ssl
import threading
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aioice.ice
import numpy as np
import pytest
import trustme
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from av import AudioFrame
from tests.support.browsers import BrowserPage, in_loopback_only_netns, launch_chromium, launch_firefox

import trio
from mccp.messages import Answer, Call, HangupRequest, Ringing
from mccp.server import MccpConnection, PageGone, load_page, serve_mccp

pytestmark = [pytest.mark.browser, pytest.mark.peers, pytest.mark.timeout(90)]
T = TypeVar("T")


class AsyncioThread:
    """An asyncio loop in a thread, for aiortc; coroutines are awaited from Trio."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="aiortc", daemon=True)
        self._thread.start()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class ToneTrack(MediaStreamTrack):
    """A 600 Hz sine, 8 kHz mono, 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        t = np.arange(160) / 8000
        self._pcm = (8000 * np.sin(2 * math.pi * 600 * t)).astype("<i2").tobytes()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            self._pts += 160
            await asyncio.sleep(max(0.0, self._start + self._pts / 8000 - loop.time()))
        frame = AudioFrame(format="s16", layout="mono", samples=160)
        frame.planes[0].update(self._pcm)
        frame.pts, frame.sample_rate, frame.time_base = self._pts, 8000, fractions.Fraction(1, 8000)
        return frame


class AiortcMedia:
    """Answers the page's offer with PCMU and counts the audio frames it decodes."""

    def __init__(self, aio: AsyncioThread) -> None:
        self.aio = aio
        self.frames = 0
        self.peak = 0
        self.pcs: list[RTCPeerConnection] = []
        self.tasks: list[asyncio.Future[None]] = []

    async def answer(self, offer: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN server lookups
        self.pcs.append(pc)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tasks.append(asyncio.ensure_future(self._consume(track)))

        pc.addTrack(ToneTrack())
        # Codec preferences must come before setRemoteDescription (aiortc reuses this transceiver).
        pcmu = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"]
        for transceiver in pc.getTransceivers():
            transceiver.setCodecPreferences(pcmu)
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        sdp: str = pc.localDescription.sdp
        return sdp

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if not isinstance(frame, AudioFrame):
                continue
            self.frames += 1
            self.peak = max(self.peak, int(np.abs(frame.to_ndarray()).max()))

    async def close(self) -> None:
        for pc in self.pcs:
            await pc.close()
        for task in self.tasks:
            task.cancel()


def _loopback_only(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"]


@asynccontextmanager
async def media_bridge(ca: trustme.CA) -> AsyncIterator[tuple[int, AiortcMedia, list[Call]]]:
    assert in_loopback_only_netns(), "browser tests run inside scripts/netns_run.sh (loopback only)"
    # aioice leaves out loopback addresses; in the loopback-only namespace there is nothing else.
    saved = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = _loopback_only
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    aio = AsyncioThread()
    media = AiortcMedia(aio)
    calls: list[Call] = []

    async def handler(conn: MccpConnection) -> None:
        try:
            call = await conn.receive()
            assert isinstance(call, Call)
            calls.append(call)
            await conn.send(Ringing())
            await conn.send(Answer(await aio.run(media.answer(call.sdp))))
            while not isinstance(await conn.receive(), HangupRequest):
                pass
        except PageGone:
            pass

    try:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                lambda task_status: serve_mccp(
                    handler,
                    host="127.0.0.1",
                    port=0,
                    ssl_context=ctx,
                    page=load_page(),
                    task_status=task_status,
                )
            )
            yield bound[0][1], media, calls
            nursery.cancel_scope.cancel()
    finally:
        with trio.move_on_after(5, shield=True):
            await aio.run(media.close())
        aio.close()
        aioice.ice.get_host_addresses = saved


async def call_with_media(
    page: BrowserPage, port: int, media: AiortcMedia, calls: list[Call]
) -> dict[str, Any]:
    await page.goto(f"https://127.0.0.1:{port}/lite.html?server=127.0.0.1:{port}&clr=100&pwd=pw&cld=200")
    await page.wait_for("__mccp.state === 'talking' || __mccp.state === 'ended'", timeout=15)
    assert await page.evaluate("__mccp.state") == "talking", await page.evaluate("__mccp.endText")
    stats: dict[str, Any] = await page.wait_for(
        "__mccp.getStats().then(s => s.inbound && s.inbound.packets >= 50 && s.outbound.packets >= 50 && s)",
        timeout=20,
    )
    with trio.fail_after(10):
        while media.frames < 50:
            await trio.sleep(0.05)
    await page.snap("media")
    await page.evaluate("document.getElementById('hangup').click()")
    await page.wait_for("__mccp.state === 'ended'")
    assert "m=audio" in calls[0].sdp
    return stats


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def run(
    launch: AbstractAsyncContextManager[BrowserPage], ca: trustme.CA
) -> tuple[dict[str, Any], AiortcMedia]:
    with trio.fail_after(80):
        async with media_bridge(ca) as (port, media, calls), launch as page:
            return await call_with_media(page, port, media, calls), media


async def test_page_media_chromium(ca: trustme.CA) -> None:
    stats, media = await run(launch_chromium(), ca)
    assert stats["codec"] == "audio/PCMU/8000"
    assert stats["ice"] in ("connected", "completed")
    assert media.peak > 1000  # the fake microphone's beep reached aiortc


async def test_page_media_firefox(ca: trustme.CA, tmp_path: Path) -> None:
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    stats, media = await run(launch_firefox(ca_pem=ca_pem), ca)
    assert stats["codec"] == "audio/PCMU/8000"
    assert media.peak > 1000  # Firefox's fake microphone tone reached aiortc
