"""`mccp-bridge serve --workers N` as a subprocess (issue 6), and registrations surviving a restart (issue 3).

Covers: two workers listening on one WSS port (SO_REUSEPORT) with their own SIP ports and media slices;
echo calls served by both (the log's worker index); a phone (SIPp, registered by a third-party REGISTER
with digest to worker 0) reached from calls that either worker runs; SIGHUP reloading every worker; a
killed worker started again; SIGTERM with calls up (every page gets its hangup, exit 0 within seconds);
a worker that cannot bind (exit 1, one line); and bindings.json bringing a registration back after a
restart of the single process. Run inside scripts/netns_run.sh (SIPp's fixed port 5090).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.calls.conftest import register_from
from tests.integration.test_cli_serve import Serving, _env, cli, serving
from tests.support.sip_peers import SIPP_PORT, SippUas
from tests.support.synthetic_browser import open_synthetic_browser

import trio
from bridge.extensions import ExtensionTable, make_extension, save_extensions

PASSWORDS = {"100": "pw-100-caller", "101": "pw-101-phone"}
PHONE_CONTACT = f"sip:101@127.0.0.1:{SIPP_PORT}"
MEDIA = (31000, 31199)


def _data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    assert cli(tmp_path, "cert", "--data-dir", str(data)).returncode == 0
    (data / "config.toml").write_text(f'shutdown_grace = 3\nrtp_ports = "{MEDIA[0]}-{MEDIA[1]}"\n')
    table = ExtensionTable(())
    for number, password in PASSWORDS.items():
        table = table.with_extension(make_extension(number, password, realm="mccp-bridge", n=2**10))
    save_extensions(data / "extensions.toml", table)
    return data


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _stored_bindings(path: Path) -> list[dict[str, object]]:
    """bindings.json once written (the registrar saves it just after its 200 OK)."""
    with trio.fail_after(3):
        while not path.exists():
            await trio.sleep(0.02)
    bindings: list[dict[str, object]] = json.loads(path.read_text())["bindings"]
    return bindings


def _start_line(index: int, port: int) -> str:
    return rf"\[worker {index}\] bridge\.app: start WSS service on wss://127\.0\.0\.1:{port}/mccp"


async def _answered_call(port: int, cld: str) -> None:
    """One answered call with media both ways from a synthetic browser, hung up by the page."""
    async with open_synthetic_browser(("127.0.0.1", port)) as page:
        await page.call("100", PASSWORDS["100"], cld)
        await page.wait_for("answer")
        await page.wait_media(to_receive=10, to_send=10)
        await page.hangup()


async def _call(bridge: Serving, port: int, cld: str) -> int:
    """`_answered_call`; the index of the worker that ran it (from the log)."""
    start = len(bridge.log)
    await _answered_call(port, cld)
    found = await bridge.wait_for(rf"\[worker (\d)\] .* call from 100 to {cld} authenticated", start=start)
    return int(found[1])


async def _calls_until_both_workers(bridge: Serving, port: int, cld: str, attempts: int = 16) -> int:
    """Call until each worker ran one (the kernel picks by a hash of the client's ephemeral port)."""
    seen: set[int] = set()
    for made in range(1, attempts + 1):
        try:
            seen.add(await _call(bridge, port, cld))
        except BaseException:
            print("\n".join(bridge.log[-60:]))
            raise
        if seen == {0, 1}:
            return made
    raise AssertionError(f"{attempts} calls to {cld} all went to worker(s) {seen}")


async def test_two_workers_share_the_port_route_to_a_phone_reload_restart_and_stop(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    port = _free_port()
    with trio.fail_after(120):
        async with serving(
            tmp_path, data, "--workers", "2", "--wss-port", str(port), started=_start_line(1, port)
        ) as bridge:
            await bridge.wait_for(_start_line(0, port))
            sip = [
                int(
                    (await bridge.wait_for(rf"\[worker {i}\] bridge\.services: SIP on 127\.0\.0\.1:(\d+)"))[1]
                )
                for i in (0, 1)
            ]
            assert sip[0] != sip[1]
            await bridge.wait_for(r"\[worker 0\] bridge\.services: SIP on .*; embedded registrar$")
            await bridge.wait_for(
                r"\[worker 1\] bridge\.services: SIP on .*; routing to the phones registered"
            )
            await bridge.wait_for(r"\[worker 0\] bridge\.services: media ports 31000-31099 \(slice 1 of 2 ")
            await bridge.wait_for(r"\[worker 1\] bridge\.services: media ports 31100-31199 \(slice 2 of 2 ")
            pids = {
                i: int((await bridge.wait_for(rf"\[supervisor\] .*worker {i} started, pid (\d+)"))[1])
                for i in (0, 1)
            }

            echo_calls = await _calls_until_both_workers(bridge, port, "600")

            # The phone registers with worker 0; calls run by either worker reach it.
            # (registered from SIPp's own port, where the registrar sends calls: phones behind NAT)
            status = await trio.to_thread.run_sync(
                lambda: register_from(
                    SIPP_PORT, ("127.0.0.1", sip[0]), "101", PASSWORDS["101"], PHONE_CONTACT
                )
            )
            assert status == 200
            uas = SippUas("uas_echo", tmp_path / "sipp", timeout_s=60)
            uas.argv[uas.argv.index("-m") + 1] = "16"
            await trio.to_thread.run_sync(uas.start)
            try:
                stored = await _stored_bindings(data / "bindings.json")
                assert [(b["user"], b["contact"]) for b in stored] == [("101", PHONE_CONTACT)]
                phone_calls = await _calls_until_both_workers(bridge, port, "101")
            finally:
                await trio.to_thread.run_sync(uas.stop)
            assert f"INVITE sip:101@127.0.0.1:{SIPP_PORT}" in uas.messages()

            # SIGHUP to the supervisor reloads every worker.
            added = cli(
                tmp_path, "extension", "add", "105", "--password", "pw-105-new", "--data-dir", str(data)
            )
            assert added.returncode == 0, added.stderr
            start = len(bridge.log)
            bridge.process.send_signal(signal.SIGHUP)
            for i in (0, 1):
                await bridge.wait_for(
                    rf"\[worker {i}\] bridge\.app: reload: 3 extensions loaded", start=start
                )

            # A worker that dies is logged and started again on the same share.
            start = len(bridge.log)
            restarted_at = time.monotonic()
            os.kill(pids[1], signal.SIGKILL)
            await bridge.wait_for(r"worker 1 died \(signal SIGKILL\); starting it again", start=start)
            await bridge.wait_for(_start_line(1, port), start=start, timeout=20)
            await bridge.wait_for(r"worker 1 ready again", start=start)
            restart_seconds = time.monotonic() - restarted_at

            # SIGTERM with calls up: every page gets its hangup, all exit 0 within seconds.
            hangups: list[int] = []
            answered = trio.Semaphore(0)
            stopped = trio.Event()

            async def held_call() -> None:
                async with open_synthetic_browser(("127.0.0.1", port)) as page:
                    await page.call("100", PASSWORDS["100"], "600")
                    await page.wait_for("answer")
                    await page.wait_media(to_receive=5)
                    answered.release()
                    await stopped.wait()
                    hangups.append((await page.wait_hangup(timeout=10)).code)

            start = len(bridge.log)
            async with trio.open_nursery() as pages:
                for _ in range(4):
                    pages.start_soon(held_call)
                for _ in range(4):
                    await answered.acquire()
                sent = time.monotonic()
                bridge.process.send_signal(signal.SIGTERM)
                stopped.set()
                with trio.fail_after(8):
                    exit_status = await bridge.process.wait()
                stop_seconds = time.monotonic() - sent
    assert exit_status == 0
    assert len(hangups) == 4
    log = bridge.log[start:]
    assert sum("stopping: " in line and "active call(s)" in line for line in log) == 2
    assert any("worker 0 exited (exit status 0)" in line for line in log)
    assert any("worker 1 exited (exit status 0)" in line for line in log)
    print(
        f"\nworkers: echo calls to reach both: {echo_calls}, phone calls: {phone_calls}; "
        f"worker restart {restart_seconds:.1f}s; SIGTERM with 4 calls -> exit {stop_seconds:.2f}s"
    )


def test_a_worker_that_cannot_bind_stops_all_with_one_line(tmp_path: Path) -> None:
    data = _data_dir(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        sip_port = taken.getsockname()[1] - 1  # worker 1 binds sip_port + 1: taken
        started = time.monotonic()
        command = [sys.executable, "-m", "bridge", "serve", "--data-dir", str(data), "--listen", "127.0.0.1"]
        command += ["--workers", "2", "--wss-port", str(_free_port()), "--sip-port", str(sip_port)]
        result = subprocess.run(
            command,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("mccp-bridge:")]
    assert len(ours) == 1, result.stderr
    assert ours == result.stderr.splitlines()[-1:]
    assert ours[0].startswith("mccp-bridge: worker 1: cannot serve: ")
    assert "address already in use" in ours[0].lower()
    assert elapsed < 30


async def test_registration_survives_a_restart(tmp_path: Path) -> None:
    """Issue 3: the phone registered before a restart is reachable after it, without registering again."""
    data = _data_dir(tmp_path)
    sip_port = _free_port(socket.SOCK_DGRAM)
    with trio.fail_after(90):
        async with serving(tmp_path, data, "--sip-port", str(sip_port)) as bridge:
            await bridge.wait_for(r"registrar: 0 live binding\(s\) loaded from .*bindings\.json")
            status = await trio.to_thread.run_sync(
                lambda: register_from(
                    SIPP_PORT, ("127.0.0.1", sip_port), "101", PASSWORDS["101"], PHONE_CONTACT
                )
            )
            assert status == 200
            bridge.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                assert await bridge.process.wait() == 0
        async with serving(tmp_path, data, "--sip-port", str(sip_port)) as bridge:
            await bridge.wait_for(r"registrar: 1 live binding\(s\) loaded from .*bindings\.json")
            with SippUas("uas_echo", tmp_path / "sipp", timeout_s=30) as uas:
                await _answered_call(bridge.port, "101")
                assert await trio.to_thread.run_sync(uas.wait, 10.0) == 0
            bridge.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                assert await bridge.process.wait() == 0


async def test_a_second_sigterm_kills_a_stuck_worker_at_once(tmp_path: Path) -> None:
    """Worker 1 is stopped (SIGSTOP): the first SIGTERM waits for it, the second kills it.

    Started with a soft limit of 256 open files, which each worker raises to the hard limit.
    """
    data = _data_dir(tmp_path)
    port = _free_port()
    with trio.fail_after(60):
        async with serving(
            tmp_path, data, "--workers", "2", "--wss-port", str(port), "--shutdown-grace", "60",
            started=r"\[supervisor\] bridge\.workers: all 2 workers ready",
            prefix=["prlimit", "--nofile=256:4096", "--"],
        ) as bridge:  # fmt: skip
            for i in (0, 1):
                await bridge.wait_for(
                    rf"\[worker {i}\] bridge\.cli: open files: limit raised from 256 to 4096$"
                )
            pids = [
                int((await bridge.wait_for(rf"\[supervisor\] .*worker {i} started, pid (\d+)"))[1])
                for i in (0, 1)
            ]
            os.kill(pids[1], signal.SIGSTOP)
            bridge.process.send_signal(signal.SIGTERM)
            await bridge.wait_for(r"\[supervisor\] bridge\.workers: worker 0 exited \(exit status 0\)")
            await trio.sleep(0.5)
            assert bridge.process.returncode is None  # still waiting for worker 1
            sent = time.monotonic()
            bridge.process.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                status = await bridge.process.wait()
            elapsed = time.monotonic() - sent
            await bridge.wait_for(r"SIGTERM again: killing the workers")
    assert status == 128 + signal.SIGTERM
    assert elapsed < 3
    with trio.fail_after(5):
        while _alive(pids[1]):
            await trio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """No orphans: a worker reads EOF on its control socket and stops gracefully."""
    data = _data_dir(tmp_path)
    port = _free_port()
    with trio.fail_after(60):
        async with serving(
            tmp_path, data, "--workers", "2", "--wss-port", str(port),
            started=r"\[supervisor\] bridge\.workers: all 2 workers ready",
        ) as bridge:  # fmt: skip
            pids = [
                int((await bridge.wait_for(rf"\[supervisor\] .*worker {i} started, pid (\d+)"))[1])
                for i in (0, 1)
            ]
            bridge.process.kill()
            for i in (0, 1):
                await bridge.wait_for(rf"\[worker {i}\] bridge\.app: the supervisor is gone: stopping")
                await bridge.wait_for(rf"\[worker {i}\] bridge\.app: stopped$")
            with trio.fail_after(5):
                while any(_alive(pid) for pid in pids):
                    await trio.sleep(0.05)


async def test_a_worker_that_cannot_start_again_says_why_and_backs_off(tmp_path: Path) -> None:
    """Worker 1 is killed and its SIP port taken: each restart fails with the reason, twice as late;
    once the port is free it comes back."""
    data = _data_dir(tmp_path)
    port = _free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        sip_port = probe.getsockname()[1] - 1
    with trio.fail_after(60):
        async with serving(
            tmp_path, data, "--workers", "2", "--wss-port", str(port), "--sip-port", str(sip_port),
            started=r"\[supervisor\] bridge\.workers: all 2 workers ready",
        ) as bridge:  # fmt: skip
            pid = int((await bridge.wait_for(r"\[supervisor\] .*worker 1 started, pid (\d+)"))[1])
            start = len(bridge.log)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
                os.kill(pid, signal.SIGKILL)
                await bridge.wait_for(
                    r"worker 1 died \(signal SIGKILL\); starting it again in 1s", start=start
                )
                with trio.fail_after(2):
                    while True:
                        try:
                            taken.bind(("127.0.0.1", sip_port + 1))
                            break
                        except OSError:  # the killed worker's socket is not closed yet
                            await trio.sleep(0.01)
                failed = await bridge.wait_for(
                    r"worker 1 could not start again: (.*)$", start=start, timeout=20
                )
                assert failed[1].startswith("cannot serve: ")
                assert "address already in use" in failed[1].lower()
                await bridge.wait_for(
                    r"worker 1 died \(exit status 1\); starting it again in 2s", start=start
                )
            await bridge.wait_for(r"worker 1 ready again", start=start, timeout=20)
            await bridge.wait_for(_start_line(1, port), start=start)
            bridge.process.send_signal(signal.SIGTERM)
            with trio.fail_after(8):
                assert await bridge.process.wait() == 0
