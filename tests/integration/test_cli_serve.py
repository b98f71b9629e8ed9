"""The real `mccp-bridge` command run as a subprocess with a temporary data dir and port 0.

Covers: first start (config, demo extensions, the printed URL), the log lines (`start WSS service`,
bound port), the page over TLS, MCCP `call` with wrong/right passwords, SIGHUP reloading extensions
added by `extension add`, SIGTERM exiting 0 quickly, one-line errors with exit status 2, and the
start-up time (median of 5).
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import trio_websocket

import trio
from mccp.codec import decode_bridge_untrusted, encode
from mccp.messages import BridgeMessage, Call, Hangup

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
START_RE = re.compile(r"start WSS service on wss://127\.0\.0\.1:(\d+)/mccp")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCCP_BRIDGE_")}
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(home: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run `python -m bridge ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Serving:
    """A running `mccp-bridge serve`: its stderr log and stdout collected line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.log: list[str] = []
        self.out: list[str] = []
        self._changed = trio.Event()

    async def _pump(self, stream: trio.abc.ReceiveStream, lines: list[str]) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode() for line in complete)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(
        self, pattern: str, lines: list[str] | None = None, timeout: float = 10, *, start: int = 0
    ) -> re.Match[str]:
        """The first line (from line `start`) matching `pattern`; fails after `timeout` seconds."""
        lines = self.log if lines is None else lines
        regex = re.compile(pattern)
        with trio.fail_after(timeout):
            while True:
                for line in lines[start:]:
                    if found := regex.search(line):
                        return found
                await self._changed.wait()

    @property
    def port(self) -> int:
        for line in self.log:
            if found := START_RE.search(line):
                return int(found[1])
        raise AssertionError("not started")


@asynccontextmanager
async def serving(
    home: Path, data_dir: Path, *extra: str, started: str = START_RE.pattern, prefix: Sequence[str] = ()
) -> AsyncIterator[Serving]:
    """`serve` in one process (`--workers 1`, unless `extra` says otherwise), until `started` is logged.

    `prefix` goes before the command (e.g. `prlimit ... --`).
    """
    args = [
        *prefix,
        sys.executable,
        "-m",
        "bridge",
        "serve",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1",
    ]
    args += ["--wss-port", "0", "--sip-port", "0", "--workers", "1", *extra]
    process = await trio.lowlevel.open_process(
        args, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    bridge = Serving(process)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None
            assert process.stderr is not None
            nursery.start_soon(bridge._pump, process.stderr, bridge.log)
            nursery.start_soon(bridge._pump, process.stdout, bridge.out)
            await bridge.wait_for(started, timeout=20)
            yield bridge
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.move_on_after(5, shield=True):
            await process.wait()


def client_context(data_dir: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(data_dir / "wrtcCert" / "server.crt"))


async def mccp_call(port: int, client: ssl.SSLContext, clr: str, pwd: str, cld: str = "600") -> BridgeMessage:
    """Open the WSS, send a `call`, return the first bridge message."""
    async with trio_websocket.open_websocket("127.0.0.1", port, "/mccp", use_ssl=client) as ws:
        await ws.send_message(encode(Call(clr=clr, pwd=pwd, cld=cld, sdp=SDP)))
        with trio.fail_after(10):
            text = await ws.get_message()
    assert isinstance(text, str)
    return decode_bridge_untrusted(text)


async def accepted(bridge: Serving, port: int, client: ssl.SSLContext, clr: str, pwd: str) -> None:
    """The call passes authentication (whatever the call handler then answers)."""
    first = await mccp_call(port, client, clr, pwd)
    assert first not in (Hangup(403, "Forbidden"), Hangup(429, "Too Many Requests"))
    await bridge.wait_for(rf"\] call from {clr} to 600 authenticated \(local\)$")


async def https_get(port: int, client: ssl.SSLContext, path: str) -> bytes:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=client, https_compatible=True)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some():
                data += chunk
    return data


async def test_first_start_url_page_calls_reload_and_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with trio.fail_after(60):
        async with serving(tmp_path, data_dir) as bridge:
            port = bridge.port
            # first start: config written, URL printed with the bound port and the echo extension
            url_line = await bridge.wait_for(r"https://\S+", bridge.out)
            url = urlsplit(url_line[0])
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            assert (url.hostname, url.port, url.path) == ("127.0.0.1", port, "/lite.html")
            assert query["server"] == f"127.0.0.1:{port}"
            assert (query["clr"], query["cld"]) == ("100", "600")
            phone = await bridge.wait_for(
                r"SIP phone for 101: user 101, password (\S+), realm mccp-bridge", bridge.out
            )
            assert (data_dir / "config.toml").is_file()
            assert (data_dir / "extensions.toml").is_file()
            assert query["pwd"] not in (data_dir / "extensions.toml").read_text()
            # the log: certificate created, extensions counted, the bound port; never a password
            await bridge.wait_for(
                r"created a self-signed certificate .* SHA-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}"
            )
            await bridge.wait_for(r"2 extensions loaded from ")
            assert any(f":{port}/mccp" in line for line in bridge.log)

            client = client_context(data_dir)
            page = await https_get(port, client, "/lite.html")
            assert page.startswith(b"HTTP/1.1 200")
            assert b"<html" in page.lower()

            assert await mccp_call(port, client, "100", "wrong") == Hangup(403, "Forbidden")
            assert await mccp_call(port, client, "404", query["pwd"]) == Hangup(403, "Forbidden")
            await accepted(bridge, port, client, "100", query["pwd"])
            await accepted(bridge, port, client, "101", phone[1])

            # extension add (another process) + SIGHUP: the new extension can call
            added = cli(
                tmp_path, "extension", "add", "105", "--password", "pw-105", "--data-dir", str(data_dir)
            )
            assert added.returncode == 0, added.stderr
            assert await mccp_call(port, client, "105", "pw-105") == Hangup(403, "Forbidden")
            bridge.process.send_signal(signal.SIGHUP)
            await bridge.wait_for(r"reload: 3 extensions loaded from ")
            await accepted(bridge, port, client, "105", "pw-105")

            secrets = (query["pwd"], phone[1], "pw-105")
            assert not any(s in line for line in bridge.log for s in secrets)

            started = time.monotonic()
            bridge.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                status = await bridge.process.wait()
            elapsed = time.monotonic() - started
    assert status == 0
    assert elapsed < 2.0
    assert bridge.log[-1].endswith("bridge.app: stopped")


async def test_second_start_keeps_config_and_prints_no_url(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "config.toml").write_text('realm = "example"\n')
    with trio.fail_after(30):
        async with serving(tmp_path, data_dir) as bridge:
            await bridge.wait_for(r"0 extensions loaded from ")
            bridge.process.send_signal(signal.SIGINT)
            with trio.fail_after(5):
                assert await bridge.process.wait() == 0
    assert bridge.out == []
    assert (data_dir / "config.toml").read_text() == 'realm = "example"\n'
    assert not (data_dir / "extensions.toml").exists()


def _one_line_exit_2(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2
    assert result.stderr == expected + "\n"


def test_bad_flag_and_values_exit_2_with_one_line(tmp_path: Path) -> None:
    _one_line_exit_2(
        cli(tmp_path, "serve", "--bogus"),
        "mccp-bridge: error: unrecognized arguments: --bogus (see mccp-bridge --help)",
    )
    _one_line_exit_2(
        cli(tmp_path, "serve", "--wss-port", "abc"),
        "mccp-bridge: config error: wss_port: must be an integer 0-65535, got 'abc' (from --wss-port)",
    )
    _one_line_exit_2(
        cli(tmp_path, "frobnicate"),
        "mccp-bridge: error: argument COMMAND: invalid choice: 'frobnicate' "
        "(choose from 'serve', 'extension', 'cert') (see mccp-bridge --help)",
    )
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "config.toml").write_text("wss_port = 'abc'\n")
    _one_line_exit_2(
        cli(tmp_path, "serve", "--data-dir", str(data_dir)),
        "mccp-bridge: config error: wss_port: must be an integer 0-65535, got 'abc' "
        f"(from {data_dir / 'config.toml'})",
    )
    env_result = subprocess.run(
        [sys.executable, "-m", "bridge", "serve"],
        env={**_env(tmp_path), "MCCP_BRIDGE_SIP_TRANSPORT": "sctp"},
        capture_output=True,
        text=True,
        timeout=20,
    )
    _one_line_exit_2(
        env_result,
        "mccp-bridge: config error: sip_transport: must be one of 'udp', 'tcp', got 'sctp' "
        "(from MCCP_BRIDGE_SIP_TRANSPORT)",
    )


@pytest.mark.parametrize("damage", ["garbage", "mismatch"])
def test_bad_certificate_exits_2_naming_the_file(tmp_path: Path, damage: str) -> None:
    data_dir = tmp_path / "d"
    assert cli(tmp_path, "cert", "--data-dir", str(data_dir)).returncode == 0
    crt, key = data_dir / "wrtcCert" / "server.crt", data_dir / "wrtcCert" / "server.key"
    if damage == "garbage":
        crt.write_text("not a certificate\n")
        expected = f"{crt}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"
    else:
        other = tmp_path / "o"
        assert cli(tmp_path, "cert", "--data-dir", str(other)).returncode == 0
        key.write_bytes((other / "wrtcCert" / "server.key").read_bytes())
        expected = f"{key}: the private key does not match the certificate in {crt}"
    result = cli(tmp_path, "serve", "--data-dir", str(data_dir), "--listen", "127.0.0.1", "--wss-port", "0")
    # (the certificate is checked before anything binds, so no --sip-port is needed here)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"mccp-bridge: certificate error: {expected}"
    assert "start WSS service" not in result.stderr


def test_port_in_use_is_one_line_exit_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            tmp_path,
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--listen",
            "127.0.0.1",
            "--wss-port",
            str(port),
            "--sip-port",
            "0",
            "--workers",
            "1",
        )
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith("mccp-bridge: cannot serve: ")
    assert "address already in use" in last.lower()


def test_help_documents_every_option(tmp_path: Path) -> None:
    from bridge.config import SETTINGS

    top = cli(tmp_path, "--help")
    serve = cli(tmp_path, "serve", "--help")
    assert top.returncode == serve.returncode == 0
    for setting in SETTINGS:
        assert setting.flag in serve.stdout
        assert setting.env in top.stdout
        assert setting.env in serve.stdout
    for command in ("serve", "extension", "cert"):
        assert command in top.stdout


async def test_startup_time_median_of_5(tmp_path: Path) -> None:
    """Launch to `start WSS service` (certificate and extensions already there), median of 5 runs."""
    data_dir = tmp_path / "data"
    assert cli(tmp_path, "cert", "--data-dir", str(data_dir)).returncode == 0
    (data_dir / "config.toml").write_text("")
    times: list[float] = []
    with trio.fail_after(100):
        for _ in range(5):
            started = trio.current_time()
            async with serving(tmp_path, data_dir) as bridge:
                times.append(trio.current_time() - started)
                bridge.process.send_signal(signal.SIGTERM)
                with trio.fail_after(5):
                    assert await bridge.process.wait() == 0
    median = statistics.median(times)
    print(f"\nserve launch -> 'start WSS service': median {median * 1000:.0f} ms of {sorted(times)}")
    assert median < 5.0


async def test_front_settings_from_the_command_line(tmp_path: Path) -> None:
    """/metrics refused outside `--metrics-allow` unless the bearer token comes; `--allowed-origins`
    refuses other pages at the upgrade; both are counted in /metrics. The real `serve` process."""
    data_dir = tmp_path / "data"
    token = "cli-metrics-token-0123456789"
    extra = ("--metrics-allow", "192.0.2.0/24", "--metrics-token", token)
    async with serving(tmp_path, data_dir, *extra, "--allowed-origins", "https://pages.example") as bridge:
        assert not any("allowed_origins is empty" in line for line in bridge.log)
        client = client_context(data_dir)
        refused = await https_get(bridge.port, client, "/metrics")
        assert refused.startswith(b"HTTP/1.1 403 "), refused[:60]
        with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
            async with trio_websocket.open_websocket(
                "127.0.0.1",
                bridge.port,
                "/mccp",
                use_ssl=client,
                extra_headers=[(b"Origin", b"https://evil.example")],
            ):
                pass
        assert rejected.value.status_code == 403
        stream = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", bridge.port, ssl_context=client, https_compatible=True
        )
        async with stream:
            await stream.send_all(
                f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
            )
            data = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some():
                    data += chunk
        assert data.startswith(b"HTTP/1.1 200 "), data[:60]
        assert b'mccp_bridge_front_refused_total{reason="route"} 1.0' in data
        assert b'mccp_bridge_front_refused_total{reason="origin"} 1.0' in data
        bridge.process.terminate()
