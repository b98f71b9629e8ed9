"""The single-port mode with `serve --workers 2` as a subprocess: worker I binds its own browser
port `rtp_browser_port + I`, logs it, and answers its calls with candidates on that port; a port
already taken stops the bridge at start with one line naming the setting.
Calls come from the synthetic browser (ICE, DTLS, SRTP on the wire like Chrome).
Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from tests.integration.test_cli_serve import Serving, cli, serving
from tests.support.synthetic_browser import open_synthetic_browser
from tests.trio.rtp.test_browser_port_services import free_run

import trio
from bridge.extensions import ExtensionTable, make_extension, save_extensions
from mccp.messages import Answer
from rtp.sdp import SessionDescription

pytestmark = [pytest.mark.timeout(90)]

PASSWORD = "pw-100-caller"
MEDIA = (31000, 31199)


def _data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert cli(tmp_path, "cert", "--data-dir", str(data)).returncode == 0
    (data / "config.toml").write_text(f'shutdown_grace = 3\nrtp_ports = "{MEDIA[0]}-{MEDIA[1]}"\n')
    table = ExtensionTable(()).with_extension(make_extension("100", PASSWORD, realm="mccp-bridge", n=2**10))
    save_extensions(data / "extensions.toml", table)
    return data


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _call_port(bridge: Serving, wss_port: int) -> tuple[int, int]:
    """One echo call with media both ways: (the worker that ran it, its answer's candidate port)."""
    start = len(bridge.log)
    async with open_synthetic_browser(("127.0.0.1", wss_port)) as page:
        await page.call("100", PASSWORD, "600")
        answer = await page.wait_for("answer")
        await page.wait_media(to_receive=10, to_send=10)
        await page.hangup()
    assert isinstance(answer, Answer)
    sdp = SessionDescription.parse_untrusted(answer.sdp)
    ports = {candidate.port for candidate in sdp.media[0].candidates()}
    assert len(ports) == 1, ports
    found = await bridge.wait_for(r"\[worker (\d)\] .* call from 100 to 600 authenticated", start=start)
    return int(found[1]), ports.pop()


async def test_each_worker_serves_its_calls_on_its_own_browser_port(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    first = free_run(2)
    wss = _free_tcp_port()
    with trio.fail_after(60):
        async with serving(
            tmp_path, data, "--workers", "2", "--wss-port", str(wss), "--rtp-browser-port", str(first),
            started=r"\[worker 1\] bridge\.app: start WSS service",
        ) as bridge:  # fmt: skip
            await bridge.wait_for(rf"\[supervisor\] .*browser media on UDP {first}-{first + 1} \(single port")
            for i in (0, 1):
                await bridge.wait_for(
                    rf"\[worker {i}\] bridge\.services: browser media on UDP 127\.0\.0\.1:{first + i} "
                    rf"\(single port, worker {i} of {first}-{first + 1}\)"
                )
            seen: dict[int, int] = {}
            for _ in range(16):  # the kernel picks the worker by a hash of the client's port
                worker, port = await _call_port(bridge, wss)
                seen[worker] = port
                if len(seen) == 2:
                    break
            assert seen == {0: first, 1: first + 1}


async def test_a_taken_browser_port_stops_the_bridge_with_one_line(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        taken = int(holder.getsockname()[1])
        done = await trio.to_thread.run_sync(
            lambda: cli(
                tmp_path,
                "serve",
                "--data-dir",
                str(data),
                "--listen",
                "127.0.0.1",
                "--wss-port",
                "0",
                "--sip-port",
                "0",
                "--workers",
                "1",
                "--rtp-browser-port",
                str(taken),
                timeout=30,
            )
        )
    assert done.returncode == 1, done.stderr
    assert f"rtp_browser_port: cannot bind UDP 127.0.0.1:{taken}" in done.stderr.splitlines()[-1]
