"""Headless browsers for the end-to-end tests, driven from Trio.

* :func:`launch_chromium`: Debian's Chromium through Playwright's sync API, run in one dedicated
  worker thread (Playwright's objects belong to the thread that made them) and awaited from Trio.
  ``wav=`` makes a WAV file the fake microphone (``--use-file-for-fake-audio-capture``).
* :func:`launch_firefox`: firefox-esr as a subprocess with a fresh profile (our prefs, the test
  CA imported with ``certutil``), driven over its built-in WebDriver BiDi endpoint with
  trio-websocket (no geckodriver exists in Debian, and none is needed). Its fake mic is a tone.

Both yield a :class:`BrowserPage`: ``goto``, ``evaluate`` (JSON results; promises are awaited),
``wait_for`` and ``screenshot``. Run them inside a loopback-only network namespace
(``scripts/netns_run.sh``): both browsers gather ICE candidates on every interface there is.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio_websocket

import trio

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FIREFOX = os.environ.get("FIREFOX", "/usr/bin/firefox-esr")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

# Root, no GPU, no network. The resolver rule stops Chromium's own lookups of Google hosts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-default-browser-check",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    # WebRTC on loopback with a fake microphone and no permission prompt.
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
]

# Firefox prefs: fake mic without prompt, loopback ICE, and silence on the network.
FIREFOX_PREFS: dict[str, bool | int | str] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "permissions.default.microphone": 1,  # without it Firefox gathers only the default-route address
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
    "media.peerconnection.ice.link_local": False,
    "media.peerconnection.default_iceservers": "[]",
    "media.autoplay.default": 0,
    "media.gmp-manager.updateEnabled": False,
    "media.gmp-manager.url": "data:text/plain,",
    "media.gmp-gmpopenh264.enabled": False,
    "media.gmp-widevinecdm.enabled": False,
    "network.proxy.type": 1,  # anything non-local goes to a dead local port
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.share_proxy_settings": True,
    "network.proxy.no_proxies_on": "",
    "network.proxy.allow_hijacking_localhost": False,
    "network.trr.mode": 5,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.predictor.enabled": False,
    "network.http.speculative-parallel-limit": 0,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "dom.security.https_first": False,
    "security.OCSP.enabled": 0,
    "services.settings.server": "data:,#remote-settings-dummy/v1",
    "app.update.disabledForTesting": True,
    "app.normandy.enabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.server": "data:,",
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "extensions.update.enabled": False,
    "extensions.blocklist.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.firstRunURL": "",
    "termsofuse.bypassNotification": True,
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.sessionstore.resume_from_crash": False,
    "dom.ipc.processPrelaunch.enabled": False,
    "devtools.console.stdout.content": True,
}


def in_loopback_only_netns() -> bool:
    """True when the only network interface is ``lo`` (see scripts/netns_run.sh)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


class BrowserPage(ABC):
    """One browser tab, as the tests drive it."""

    name: str
    console: list[str]

    @abstractmethod
    async def goto(self, url: str) -> None:
        """Load ``url`` and wait for the load event."""

    @abstractmethod
    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression (a promise is awaited)."""

    @abstractmethod
    async def screenshot(self, path: Path) -> None:
        """Save a PNG of the viewport."""

    async def wait_for(self, expression: str, *, timeout: float = 10.0, interval: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; return its value. Raises trio.TooSlowError."""
        with trio.fail_after(timeout):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await trio.sleep(interval)

    async def snap(self, state: str) -> Path:
        """Save test-artifacts/screenshots/<browser>-<state>.png and return its path."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.name}-{state}.png"
        await self.screenshot(path)
        return path


# ------------------------------------------------------------------ Chromium (Playwright)


class _ChromiumPage(BrowserPage):
    def __init__(self, run: Callable[..., Any], page: Any) -> None:
        self.name = "chromium"
        self.console = []
        self._run = run
        self._page = page
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))

    async def goto(self, url: str) -> None:
        await self._run(lambda: self._page.goto(url, wait_until="load", timeout=15000))

    async def evaluate(self, expression: str) -> Any:
        return await self._run(lambda: self._page.evaluate(f"async () => ({expression})"))

    async def screenshot(self, path: Path) -> None:
        await self._run(lambda: self._page.screenshot(path=str(path)))


@asynccontextmanager
async def launch_chromium(
    *,
    wav: Path | None = None,
    fake_ui: bool = True,
    extra_flags: Sequence[str] = (),
) -> AsyncIterator[BrowserPage]:
    """Headless Chromium with one tab; certificate errors are ignored (https and wss).

    ``wav`` plays that file as the microphone (in a loop; mono 16-bit, 8 or 48 kHz).
    ``fake_ui=False`` leaves the permission prompt in place, which headless denies.
    """
    flags = [*CHROMIUM_FLAGS, *extra_flags]
    if fake_ui:
        flags.append("--use-fake-ui-for-media-stream")
    if wav is not None:
        flags.append(f"--use-file-for-fake-audio-capture={wav}")
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")

    async def run(fn: Callable[[], Any]) -> Any:
        future = pool.submit(fn)
        return await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)

    def start() -> tuple[Any, Any, Any]:
        from playwright.sync_api import sync_playwright

        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=flags, timeout=20000)
        page = browser.new_context(ignore_https_errors=True).new_page()
        return pw, browser, page

    def stop(pw: Any, browser: Any) -> None:
        try:
            browser.close()
        finally:
            pw.stop()

    try:
        pw, browser, page = await run(start)
        try:
            yield _ChromiumPage(run, page)
        finally:
            with trio.move_on_after(15, shield=True):
                await run(lambda: stop(pw, browser))
    finally:
        pool.shutdown(wait=False)


# ------------------------------------------------------------------ Firefox (WebDriver BiDi)


class _FirefoxPage(BrowserPage):
    def __init__(self, ws: trio_websocket.WebSocketConnection, context: str) -> None:
        self.name = "firefox"
        self.console = []
        self._ws = ws
        self._context = context
        self._next_id = 0

    async def command(self, method: str, params: dict[str, Any], timeout: float = 20.0) -> Any:
        """One BiDi command; events that arrive meanwhile go to ``console``."""
        self._next_id += 1
        ident = self._next_id
        await self._ws.send_message(json.dumps({"id": ident, "method": method, "params": params}))
        with trio.fail_after(timeout):
            while True:
                msg = json.loads(await self._ws.get_message())
                if msg.get("type") == "event":
                    if msg.get("method") == "log.entryAdded":
                        entry = msg["params"]
                        self.console.append(f"{entry.get('level')}: {entry.get('text')}")
                    continue
                if msg.get("id") != ident:
                    continue
                if msg.get("type") == "error":
                    raise RuntimeError(f"BiDi {method}: {msg.get('error')}: {msg.get('message')}")
                return msg["result"]

    async def goto(self, url: str) -> None:
        await self.command(
            "browsingContext.navigate", {"context": self._context, "url": url, "wait": "complete"}
        )

    async def evaluate(self, expression: str) -> Any:
        result = await self.command(
            "script.evaluate",
            {
                "expression": f"(async () => JSON.stringify(await ({expression})))()",
                "target": {"context": self._context},
                "awaitPromise": True,
                "resultOwnership": "none",
            },
        )
        if result.get("type") == "exception":
            raise RuntimeError(f"page exception: {result['exceptionDetails'].get('text')}")
        value = result["result"]
        return json.loads(value["value"]) if value.get("type") == "string" else None

    async def screenshot(self, path: Path) -> None:
        result = await self.command("browsingContext.captureScreenshot", {"context": self._context})
        path.write_bytes(base64.b64decode(result["data"]))


def _write_profile(profile: Path, ca_pem: Path | None) -> None:
    profile.mkdir(parents=True)
    lines = [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in FIREFOX_PREFS.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")
    if ca_pem is not None:
        # Trust the test CA in this profile only; "C,," = trusted to issue TLS server certificates.
        subprocess.run(["certutil", "-N", "-d", f"sql:{profile}", "--empty-password"], check=True)
        cmd = ["certutil", "-A", "-d", f"sql:{profile}", "-n", "mccp-test-ca", "-t", "C,,", "-i", str(ca_pem)]
        subprocess.run(cmd, check=True)


@asynccontextmanager
async def launch_firefox(*, ca_pem: Path | None = None) -> AsyncIterator[BrowserPage]:
    """Headless firefox-esr with a fresh profile; ``ca_pem`` is imported as a trusted CA.

    The BiDi session also sets ``acceptInsecureCerts`` (for https pages); the CA import is what
    lets a ``file://`` page open ``wss://`` to the test server.
    """
    workdir = Path(tempfile.mkdtemp(prefix="mccp-firefox-"))
    profile = workdir / "profile"
    log_path = workdir / "firefox.log"
    _write_profile(profile, ca_pem)
    env = dict(os.environ)
    env.update(
        HOME=str(workdir),
        MOZ_DISABLE_NONLOCAL_CONNECTIONS="1",  # release builds honour the dummy settings URL only then
        MOZ_CRASHREPORTER_DISABLE="1",
        MOZ_HEADLESS="1",
    )
    cmd = [FIREFOX, "--headless", "--no-remote", "--profile", str(profile), "--remote-debugging-port=0"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, "about:blank"], stdout=log, stderr=log, env=env, start_new_session=True
        )
    try:
        endpoint = await _bidi_endpoint(log_path, proc)
        async with trio_websocket.open_websocket_url(
            endpoint + "/session", max_message_size=64 * 1024 * 1024
        ) as ws:
            page = _FirefoxPage(ws, "")
            await page.command(
                "session.new", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": True}}}
            )
            await page.command("session.subscribe", {"events": ["log.entryAdded"]})
            tree = await page.command("browsingContext.getTree", {})
            page._context = tree["contexts"][0]["context"]
            try:
                yield page
            finally:
                with trio.move_on_after(5, shield=True):
                    await page.command("browser.close", {}, timeout=5)
    finally:
        with trio.move_on_after(5, shield=True):
            while proc.poll() is None:
                await trio.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


async def _bidi_endpoint(log_path: Path, proc: subprocess.Popen[bytes]) -> str:
    with trio.fail_after(30):
        while True:
            found = re.search(rb"WebDriver BiDi listening on (ws://[0-9.:\[\]]+)", log_path.read_bytes())
            if found:
                return found.group(1).decode()
            if proc.poll() is not None:
                raise RuntimeError(f"firefox exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
            await trio.sleep(0.05)
