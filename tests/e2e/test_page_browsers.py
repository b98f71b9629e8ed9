"""lite.html in real headless browsers (Chromium via Playwright, Firefox ESR via WebDriver BiDi).

The page is served by the real MCCP server over TLS (a trustme certificate) and also opened from
``file://``; a scripted handler plays the bridge. Each reached state is screenshotted to
test-artifacts/screenshots/<browser>-<state>.png. Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from tests.support.browsers import BrowserPage, in_loopback_only_netns, launch_chromium, launch_firefox

import trio
from mccp.messages import Answer, Call, Dtmf, Hangup, HangupRequest, PageMessage, Progress, Ringing, Trying
from mccp.server import MccpConnection, PageGone, ServerLimits, load_page, serve_mccp

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]


def fake_answer(offer: str, version: int) -> str:
    """A well-formed ICE-lite answer to ``offer`` (its candidate leads nowhere: no media is tested)."""
    found = re.search(r"^a=mid:(\S+)", offer, re.MULTILINE)
    assert found, "the offer has no a=mid"
    mid = found.group(1)
    return "\r\n".join(
        [
            "v=0",
            f"o=- 4242 {version} IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            f"a=group:BUNDLE {mid}",
            "a=ice-lite",
            "m=audio 9 UDP/TLS/RTP/SAVPF 0 8",
            "c=IN IP4 127.0.0.1",
            "a=rtcp-mux",
            f"a=mid:{mid}",
            "a=ice-ufrag:mccpTest",
            "a=ice-pwd:mccpTestPasswordOf24chars",
            "a=fingerprint:sha-256 " + ":".join(["4F"] * 32),
            "a=setup:active",
            "a=sendrecv",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host",
            "",
        ]
    )


def assert_audio_offer(sdp: str) -> None:
    lines = sdp.replace("\r\n", "\n").strip().split("\n")
    assert lines[0] == "v=0"
    assert all(re.fullmatch(r"[a-z]=.*", line) for line in lines), "not SDP"
    media = [line for line in lines if line.startswith("m=")]
    assert len(media) == 1
    assert media[0].startswith("m=audio ")
    assert "UDP/TLS/RTP/SAVPF" in media[0]
    assert any(line.startswith("a=fingerprint:sha-256 ") for line in lines)
    assert any(line.startswith("a=ice-ufrag:") for line in lines)


@dataclass
class FakeBridge:
    """The handler: what it does depends on the called number (``cld``)."""

    calls: dict[str, Call] = field(default_factory=dict)
    release: dict[str, trio.Event] = field(default_factory=dict)
    after_answer: dict[str, list[PageMessage]] = field(default_factory=dict)

    async def __call__(self, conn: MccpConnection) -> None:
        try:
            call = await conn.receive()
            assert isinstance(call, Call)
            self.calls[call.cld] = call
            match call.cld:
                case "ring":  # rings until the test says "busy"
                    await conn.send(Trying())
                    await conn.send(Ringing())
                    await self.release.setdefault("ring", trio.Event()).wait()
                    await conn.send(Hangup(486, "Busy Here"))
                case "talk":  # ringing, early media, then answered with an updated SDP
                    await conn.send(Ringing())
                    await self.release.setdefault("early", trio.Event()).wait()
                    await conn.send(Progress(fake_answer(call.sdp, 1)))
                    await self.release.setdefault("talk", trio.Event()).wait()
                    await conn.send(Answer(fake_answer(call.sdp, 2)))
                    seen: list[PageMessage] = []
                    while not isinstance(msg := await conn.receive(), HangupRequest):
                        seen.append(msg)
                    self.after_answer["talk"] = [*seen, msg]
                case "fast" | "same":  # progress and answer back to back (same or updated SDP)
                    await conn.send(Ringing())
                    await conn.send(Progress(fake_answer(call.sdp, 1)))
                    await conn.send(Answer(fake_answer(call.sdp, 2 if call.cld == "fast" else 1)))
                    await conn.receive()
                case "drop":  # the bridge goes away mid-call
                    await conn.send(Ringing())
                case _:
                    await conn.send(Hangup(403, "Forbidden"))
        except PageGone:
            pass

    def go(self, name: str) -> None:
        self.release.setdefault(name, trio.Event()).set()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def bridge_server(ca: trustme.CA) -> AsyncIterator[tuple[int, FakeBridge]]:
    assert in_loopback_only_netns(), "browser tests run inside scripts/netns_run.sh (loopback only)"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    fake = FakeBridge()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_mccp(
                fake,
                host="127.0.0.1",
                port=0,
                ssl_context=ctx,
                page=load_page(),
                limits=ServerLimits(call_timeout=20.0),
                task_status=task_status,
            )
        )
        yield bound[0][1], fake
        nursery.cancel_scope.cancel()


async def wait_state(page: BrowserPage, state: str, timeout: float = 10.0) -> None:
    try:
        await page.wait_for(f"window.__mccp && window.__mccp.state === {state!r}", timeout=timeout)
    except trio.TooSlowError:
        info = await page.evaluate("window.__mccp && {states: __mccp.states, end: __mccp.endText}")
        raise AssertionError(
            f"{page.name}: no state {state!r}; page: {info}; console: {page.console}"
        ) from None


async def text_of(page: BrowserPage, element: str) -> str:
    value = await page.evaluate(f"document.getElementById({element!r}).textContent")
    assert isinstance(value, str)
    return value


async def exercise(page: BrowserPage, port: int, fake: FakeBridge, tmp_path: Path) -> list[str]:
    """Every scenario on one browser; returns the screenshot paths."""
    shots: list[str] = []
    https = f"https://127.0.0.1:{port}/lite.html"
    params = f"server=127.0.0.1:{port}&clr=100&pwd=secret"

    # 1. The form: no call parameters, the server pre-filled from location.host over https.
    await page.goto(https)
    assert await page.evaluate("__mccp.state") == "idle"
    assert await page.evaluate("document.getElementById('server').value") == f"127.0.0.1:{port}"
    assert await page.evaluate("document.getElementById('form').classList.contains('hidden')") is False
    shots.append(str(await page.snap("form")))
    hosts = await page.evaluate(
        "['bridge.example', 'bridge.example:443', '10.0.0.1', '::1', '[::1]', '[::1]:7000'].map(bridgeHost)"
    )
    assert hosts == [
        "bridge.example:5062",
        "bridge.example:443",
        "10.0.0.1:5062",
        "[::1]:5062",
        "[::1]:5062",
        "[::1]:7000",
    ]

    # The form calls with what was typed in.
    for name, value in (("clr", "7"), ("pwd", "bad"), ("cld", "form")):
        await page.evaluate(f"document.getElementById({name!r}).value = {value!r}")
    await page.evaluate("document.getElementById('call').click()")
    await wait_state(page, "ended")
    assert await text_of(page, "detail") == "Wrong password (403)"
    assert (fake.calls["form"].clr, fake.calls["form"].pwd) == ("7", "bad")

    # 2. Served over https: calling -> ringing (ringback) -> busy.
    await page.goto(f"{https}?{params}&cld=ring")
    await wait_state(page, "ringing")
    assert await text_of(page, "status") == "Ringing…"
    assert await page.evaluate("__mccp.ringback") is True
    shots.append(str(await page.snap("ringing")))
    assert_audio_offer(fake.calls["ring"].sdp)
    assert (fake.calls["ring"].clr, fake.calls["ring"].pwd) == ("100", "secret")
    fake.go("ring")
    await wait_state(page, "ended")
    assert await text_of(page, "detail") == "Busy (486)"
    assert await page.evaluate("[__mccp.hangupCode, __mccp.hangupReason]") == [486, "Busy Here"]
    shots.append(str(await page.snap("busy")))

    # 3. Opened from file://: wrong password.
    local = tmp_path / "lite.html"
    local.write_bytes(load_page())
    await page.goto(f"{local.as_uri()}?{params}&cld=nobody")
    await wait_state(page, "ended")
    assert await text_of(page, "detail") == "Wrong password (403)"
    assert_audio_offer(fake.calls["nobody"].sdp)
    shots.append(str(await page.snap("wrong-password")))

    # 4. From file:// again: ringing -> the bridge's early answer (progress) -> talking with an
    # updated answer. `progress` alone is not early media (no audio arrives): the ringback goes on.
    await page.goto(f"{local.as_uri()}?{params}&cld=talk")
    await wait_state(page, "ringing")
    fake.go("early")
    await page.wait_for("__mccp.answerSdp !== null")
    await trio.sleep(0.6)
    assert await page.evaluate("[__mccp.state, __mccp.ringback]") == ["ringing", True]
    shots.append(str(await page.snap("ringing-answered")))
    fake.go("talk")
    await wait_state(page, "talking")
    assert await page.evaluate("__mccp.errors") == []
    assert await page.evaluate("__mccp.answerSdp.includes('o=- 4242 2 ')") is True
    assert await page.wait_for("/^\\d\\d:\\d\\d$/.test(document.getElementById('detail').textContent)")
    if page.name == "chromium":  # headless Firefox keeps its AudioContext suspended (no sound output)
        await page.wait_for("__mccp.micPeak > 0.01")  # the meter sees the fake microphone
    shots.append(str(await page.snap("talking")))
    await page.evaluate(
        "[...document.querySelectorAll('#keypad button')].find(b => b.textContent == '5').click()"
    )
    await page.evaluate("document.getElementById('mute').click()")
    assert await page.evaluate("document.getElementById('mute').textContent") == "Unmute"
    assert await page.wait_for("__mccp.sent.includes('dtmf')")
    await page.evaluate("document.getElementById('hangup').click()")
    await wait_state(page, "ended")
    assert await text_of(page, "detail") == "You hung up"
    assert await page.evaluate("__mccp.sent") == ["call", "dtmf", "hangup"]
    with trio.fail_after(5):
        while "talk" not in fake.after_answer:
            await trio.sleep(0.05)
    assert fake.after_answer["talk"] == [Dtmf("5"), HangupRequest()]

    # 5. progress + answer back to back: applied in order; an identical answer changes nothing,
    #    a different one is applied through a new offer (o= version of the local SDP moves on).
    local_o = "pc.localDescription.sdp.match(/^o=.*$/m)[0] === __mccp.offerSdp.match(/^o=.*$/m)[0]"
    for cld, renegotiated in (("fast", True), ("same", False)):
        await page.goto(f"{local.as_uri()}?{params}&cld={cld}")
        await wait_state(page, "talking")
        await page.wait_for("pc.signalingState === 'stable'")
        assert await page.evaluate("__mccp.errors") == []
        assert await page.evaluate("__mccp.endText") is None
        assert await page.evaluate(local_o) is (not renegotiated)
        assert await page.evaluate("__mccp.answerSdp.includes('o=- 4242 2 ')") is renegotiated

    # 6. The bridge closes the socket while ringing.
    await page.goto(f"{https}?{params}&cld=drop")
    await wait_state(page, "ended")
    assert (await text_of(page, "detail")).startswith("Connection to the bridge lost")
    shots.append(str(await page.snap("connection-lost")))

    # 7. Nothing listening: an error a person can act on, with a link to accept the certificate.
    await page.goto(f"{https}?server=127.0.0.1:1&clr=1&pwd=x&cld=2")
    await wait_state(page, "ended")
    detail = await text_of(page, "detail")
    assert "Cannot open wss://127.0.0.1:1/mccp" in detail
    assert await page.evaluate("document.querySelector('#detail a').href") == "https://127.0.0.1:1/"
    shots.append(str(await page.snap("unreachable")))

    # 8. A crafted server parameter is refused, never parsed as HTML.
    await page.goto(f"{https}?server=%3Cimg%20src%3Dx%20onerror%3D__pwned%3D1%3E&clr=1&pwd=x&cld=2")
    await wait_state(page, "ended")
    assert (await text_of(page, "detail")).startswith("Invalid bridge address: <img")
    assert await page.evaluate("typeof __pwned") == "undefined"
    return shots


async def run_browser(
    launch: Callable[[], AbstractAsyncContextManager[BrowserPage]], ca: trustme.CA, tmp_path: Path
) -> list[str]:
    with trio.fail_after(80):
        async with bridge_server(ca) as (port, fake), launch() as page:
            return await exercise(page, port, fake, tmp_path)


async def test_page_in_chromium(ca: trustme.CA, tmp_path: Path) -> None:
    shots = await run_browser(launch_chromium, ca, tmp_path)
    assert all(Path(p).stat().st_size > 1000 for p in shots)


async def test_page_in_firefox(ca: trustme.CA, tmp_path: Path) -> None:
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    shots = await run_browser(lambda: launch_firefox(ca_pem=ca_pem), ca, tmp_path)
    assert all(Path(p).stat().st_size > 1000 for p in shots)


async def test_page_mic_denied_in_chromium(ca: trustme.CA) -> None:
    with trio.fail_after(40):
        async with bridge_server(ca) as (port, fake), launch_chromium(fake_ui=False) as page:
            await page.goto(
                f"https://127.0.0.1:{port}/lite.html?server=127.0.0.1:{port}&clr=1&pwd=x&cld=ring"
            )
            await wait_state(page, "ended")
            assert (await text_of(page, "detail")).startswith("Microphone permission denied")
            await page.snap("mic-denied")
    assert fake.calls == {}
