"""bridge.app over loopback TLS: authentication on the first `call`, the services seam, reload, stop.

The bridge runs in-process (`run_bridge`, real TLS listener on 127.0.0.1 port 0); the page is a
trio-websocket client speaking MCCP JSON. Every test runs under `trio.fail_after`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio.testing
import trio_websocket

import trio
from bridge.app import AuthenticatedCall, BridgeContext, CallHandler, Services, malloc_trim, run_bridge
from bridge.auth import AuthOutcome
from bridge.certs import generate_self_signed
from bridge.config import Config, Upstream
from bridge.extensions import ExtensionTable, make_extension, save_extensions
from mccp.codec import decode_bridge_untrusted, encode
from mccp.messages import Answer, BridgeMessage, Call, Hangup
from mccp.server import MccpConnection

FAST = 2**4
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


async def answer_503(conn: MccpConnection, call: AuthenticatedCall) -> None:
    """A scripted call handler: every authenticated call gets `hangup` 503."""
    await conn.send(Hangup(503, "calls not available yet"))


@asynccontextmanager
async def no_call_services(context: BridgeContext) -> AsyncIterator[CallHandler]:
    """Scripted services that start nothing: the app's own behaviour is what these tests check."""
    del context
    yield answer_503


def _config(tmp_path: Path, **overrides: object) -> Config:
    table = ExtensionTable(
        (
            make_extension("100", "right", realm="mccp-bridge", n=FAST),
            make_extension("101", "pw101", realm="mccp-bridge", n=FAST),
        )
    )
    save_extensions(tmp_path / "extensions.toml", table)
    base = Config(data_dir=tmp_path, listen="127.0.0.1", wss_port=0, auth_delay=0.0, shutdown_grace=2.0)
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    config: Config, services: Services = no_call_services
) -> AsyncIterator[tuple[BridgeContext, ssl.SSLContext]]:
    async with trio.open_nursery() as nursery:
        context: BridgeContext = await nursery.start(
            partial(run_bridge, config, services=services, handle_signals=False)
        )
        client = ssl.create_default_context(cafile=str(config.cert_dir / "server.crt"))
        try:
            yield context, client
        finally:
            context.stop()


@asynccontextmanager
async def page(
    context: BridgeContext, client: ssl.SSLContext, origin: bytes = b"https://127.0.0.1"
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    port = context.wss_addresses[0][1]
    async with trio_websocket.open_websocket(
        "127.0.0.1", port, "/mccp", use_ssl=client, extra_headers=[(b"Origin", origin)]
    ) as ws:
        yield ws


async def recv(ws: trio_websocket.WebSocketConnection) -> BridgeMessage:
    with trio.fail_after(5):
        text = await ws.get_message()
    assert isinstance(text, str)
    return decode_bridge_untrusted(text)


async def closed(ws: trio_websocket.WebSocketConnection) -> bool:
    with trio.fail_after(5):
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed:
            return True
    return False


def call(clr: str = "100", pwd: str = "right", cld: str = "600") -> str:
    return encode(Call(clr=clr, pwd=pwd, cld=cld, sdp=SDP))


class Recorder:
    def __init__(self) -> None:
        self.calls: list[AuthenticatedCall] = []
        self.entered = self.exited = 0
        self.release = trio.Event()

    @asynccontextmanager
    async def services(self, context: BridgeContext) -> AsyncIterator[CallHandler]:
        assert context.wss_addresses == []  # entered before the listener starts
        self.entered += 1
        try:
            yield self.handler
        finally:
            self.exited += 1

    async def handler(self, conn: MccpConnection, accepted: AuthenticatedCall) -> None:
        self.calls.append(accepted)
        await conn.send(Answer(SDP))
        await self.release.wait()
        await conn.send(Hangup(200, "done"))


async def test_wrong_password_and_unknown_extension_get_403_and_close(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(_config(tmp_path)) as (context, client):
            for clr, pwd in (("100", "wrong"), ("999", "right")):
                async with page(context, client) as ws:
                    await ws.send_message(call(clr, pwd))
                    assert await recv(ws) == Hangup(403, "Forbidden")
                    assert await closed(ws)


async def test_default_handler_is_honest_503(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(_config(tmp_path)) as (context, client), page(context, client) as ws:
            await ws.send_message(call())
            assert await recv(ws) == Hangup(503, "calls not available yet")
            assert await closed(ws)


async def test_services_seam_gets_authenticated_calls(tmp_path: Path) -> None:
    rec = Recorder()
    with trio.fail_after(10):
        async with running(_config(tmp_path), services=rec.services) as (context, client):
            assert rec.entered == 1
            async with page(context, client) as ws:
                await ws.send_message(call("101", "pw101", "5551234"))
                assert await recv(ws) == Answer(SDP)
                assert context.active_calls == 1
                rec.release.set()
                assert await recv(ws) == Hangup(200, "done")
                assert await closed(ws)
        assert rec.exited == 1
    [accepted] = rec.calls
    assert (accepted.caller, accepted.callee, accepted.remote[0]) == ("101", "5551234", "127.0.0.1")
    assert accepted.auth.outcome is AuthOutcome.ACCEPTED
    assert "pw101" not in repr(accepted)


async def test_lockout_gives_429_and_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, auth_max_failures=1, auth_lockout_failures=2, auth_lockout=600.0)
    with trio.fail_after(15):
        async with running(config) as (context, client):
            answers = []
            for pwd in ("bad1", "bad2", "right", "right"):
                async with page(context, client) as ws:
                    await ws.send_message(call(pwd=pwd))
                    answers.append(await recv(ws))
            assert (context.stats.refused_credentials, context.stats.refused_locked_out) == (1, 3)
            assert (context.stats.connections, context.stats.calls_accepted) == (4, 0)
    assert answers == [Hangup(403, "Forbidden")] + [Hangup(429, "Too Many Requests")] * 3
    locks = [r.getMessage() for r in caplog.records if "locked out" in r.getMessage()]
    assert len(locks) == 2  # source and extension, each once
    assert all(m.startswith("[127.0.0.1:") for m in locks)
    assert not any("right" in r.getMessage() or "bad1" in r.getMessage() for r in caplog.records)


async def test_upstream_mode_passes_unknown_extensions_to_the_handler(tmp_path: Path) -> None:
    rec = Recorder()
    rec.release.set()
    config = _config(tmp_path, upstream=Upstream("127.0.0.1", 5070))
    with trio.fail_after(10):
        async with running(config, services=rec.services) as (context, client), page(context, client) as ws:
            await ws.send_message(call("7000", "for-the-upstream"))
            assert await recv(ws) == Answer(SDP)
            assert await recv(ws) == Hangup(200, "done")
            result = context.upstream_rejected(rec.calls[0])
            assert result.outcome is AuthOutcome.REJECTED
    assert rec.calls[0].auth.outcome is AuthOutcome.UPSTREAM
    assert rec.calls[0].call.pwd == "for-the-upstream"


async def test_file_origin_refused_when_disallowed(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running(_config(tmp_path, allow_file_origin=False)) as (context, client):
            async with page(context, client, origin=b"null") as ws:
                assert await recv(ws) == Hangup(403, "pages opened from file:// are not allowed")
                assert await closed(ws)
            async with page(context, client) as ws:  # an https page still works
                await ws.send_message(call())
                assert await recv(ws) == Hangup(503, "calls not available yet")
            assert (context.stats.refused_file_origin, context.stats.calls_accepted) == (1, 1)


async def test_reload_picks_up_new_extensions_and_keeps_old_on_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = _config(tmp_path)
    with trio.fail_after(10):
        async with running(config) as (context, client):
            table = context.authenticator.table.with_extension(
                make_extension("102", "new", realm="r", n=FAST)
            )
            save_extensions(config.extensions_file, table)
            context.reload()
            assert len(context.authenticator.table) == 3
            async with page(context, client) as ws:
                await ws.send_message(call("102", "new"))
                assert await recv(ws) == Hangup(503, "calls not available yet")
            config.extensions_file.write_text("garbage = [")
            context.reload()
            assert len(context.authenticator.table) == 3
            # a new certificate is served to new connections after reload, from the same SSLContext
            new = generate_self_signed(config.cert_dir, ["127.0.0.1"], now=dt.datetime.now(dt.UTC))
            context.reload()
            async with page(context, ssl.create_default_context(cafile=str(new.cert_file))) as ws:
                await ws.send_message(call())
                assert await recv(ws) == Hangup(503, "calls not available yet")
            old_client = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", context.wss_addresses[0][1], ssl_context=client
            )
            with pytest.raises(trio.BrokenResourceError) as broken:
                await old_client.do_handshake()
            assert isinstance(broken.value.__cause__, ssl.SSLCertVerificationError)
            await trio.aclose_forcefully(old_client)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("reload: 3 extensions loaded from ") for m in messages)
    assert any(m.startswith("reload: extensions not reloaded, keeping 3: invalid TOML") for m in messages)
    assert any(m.startswith("reload: certificate ") for m in messages)
    # extension 102 was hashed for realm "r": its digest HA1 cannot serve realm mccp-bridge
    assert any(
        m.startswith("extensions 102 were hashed for another realm than 'mccp-bridge'") for m in messages
    )


async def test_stop_cancels_calls_and_returns_after_their_cleanup(tmp_path: Path) -> None:
    cleaned: list[str] = []

    @asynccontextmanager
    async def services(context: BridgeContext) -> AsyncIterator[CallHandler]:
        async def handler(conn: MccpConnection, accepted: AuthenticatedCall) -> None:
            try:
                await conn.send(Answer(SDP))
                await trio.sleep_forever()
            finally:
                with trio.move_on_after(1, shield=True):
                    await conn.send(Hangup(200, "bridge stopping"))
                    cleaned.append(accepted.caller)

        yield handler

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            context: BridgeContext = await nursery.start(
                partial(run_bridge, _config(tmp_path), services=services, handle_signals=False)
            )
            client = ssl.create_default_context(cafile=str(tmp_path / "wrtcCert" / "server.crt"))
            async with page(context, client) as ws:
                await ws.send_message(call())
                assert await recv(ws) == Answer(SDP)
                started = trio.current_time()
                context.stop()
                assert await recv(ws) == Hangup(200, "bridge stopping")
                assert await closed(ws)
        # run_bridge returned: the nursery is done
        assert trio.current_time() - started < 2.0
    assert cleaned == ["100"]


async def test_stop_ends_pages_that_have_not_called_without_waiting_for_the_grace(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            config = _config(tmp_path, shutdown_grace=5.0)
            context: BridgeContext = await nursery.start(
                partial(run_bridge, config, services=no_call_services, handle_signals=False)
            )
            client = ssl.create_default_context(cafile=str(config.cert_dir / "server.crt"))
            async with page(context, client) as ws:
                await trio.sleep(0.2)  # connected, no call sent
                started = trio.current_time()
                context.stop()
                assert await recv(ws) == Hangup(503, "bridge is shutting down")
                assert await closed(ws)
        assert trio.current_time() - started < 1.5


async def test_second_signal_forces_exit(tmp_path: Path) -> None:
    exits: list[int] = []
    stuck = trio.Event()

    @asynccontextmanager
    async def services(context: BridgeContext) -> AsyncIterator[CallHandler]:
        async def handler(conn: MccpConnection, accepted: AuthenticatedCall) -> None:
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    stuck.set()
                    with trio.move_on_after(3):  # a slow clean-up, bounded by the test
                        await trio.sleep_forever()

        yield handler

    config = _config(tmp_path, shutdown_grace=5.0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            context: BridgeContext = await nursery.start(
                partial(run_bridge, config, services=services, force_exit=exits.append)
            )
            client = ssl.create_default_context(cafile=str(config.cert_dir / "server.crt"))
            async with page(context, client) as ws:
                await ws.send_message(call())
                await trio.sleep(0.3)  # the call is in the handler
                os.kill(os.getpid(), signal.SIGTERM)
                await stuck.wait()
                assert context.stopping
                async with page(context, client) as late:  # still listening during the grace: refused
                    assert await recv(late) == Hangup(503, "bridge is shutting down")
                os.kill(os.getpid(), signal.SIGTERM)
                with trio.fail_after(2):
                    while not exits:
                        await trio.sleep(0.01)
    assert exits == [128 + signal.SIGTERM]


def test_malloc_trim_is_glibcs() -> None:
    trim = malloc_trim()
    assert trim is not None  # Debian's glibc
    assert trim() in (0, 1)  # 1: memory was given back


async def test_heap_is_trimmed_once_connections_settle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.app.HEAP_QUIET", 0.05)
    trims: list[int] = []
    trimmed = trio.Event()

    def trim() -> None:  # runs in a worker thread
        trims.append(context.active_calls)
        trio.from_thread.run_sync(trimmed.set)

    with trio.fail_after(10):
        async with running(_config(tmp_path)) as (context, client), trio.open_nursery() as nursery:
            nursery.start_soon(context.trim_heap, trim)
            await trio.testing.wait_all_tasks_blocked()
            assert trims == []  # no connection yet: nothing to give back
            for _ in range(2):
                async with page(context, client) as ws:
                    await ws.send_message(call())
                    assert await recv(ws) == Hangup(503, "calls not available yet")
                    assert await closed(ws)
            await trimmed.wait()
            assert trims == [0]  # after the connections had come and gone
            nursery.cancel_scope.cancel()
