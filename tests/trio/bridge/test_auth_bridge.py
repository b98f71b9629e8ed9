"""The credentials cache inside the running bridge (issue 6): a redial skips scrypt, SIGHUP drops it.

The bridge runs in-process (`run_bridge`, real TLS listener on 127.0.0.1 port 0) with scripted
services that answer every authenticated call with `hangup` 503; the page is a trio-websocket client.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio_websocket

import trio
from bridge.app import AuthenticatedCall, BridgeContext, CallHandler, run_bridge
from bridge.config import Config
from bridge.extensions import ExtensionTable, make_extension, save_extensions
from mccp.codec import decode_bridge_untrusted, encode
from mccp.messages import Call, Hangup
from mccp.server import MccpConnection

FAST = 2**4
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@asynccontextmanager
async def answer_503(context: BridgeContext) -> AsyncIterator[CallHandler]:
    del context

    async def handler(conn: MccpConnection, call: AuthenticatedCall) -> None:
        await conn.send(Hangup(503, "authenticated"))

    yield handler


def _save(data_dir: Path, password: str) -> None:
    table = ExtensionTable((make_extension("100", password, realm="mccp-bridge", n=FAST),))
    save_extensions(data_dir / "extensions.toml", table)


async def _login(context: BridgeContext, client: ssl.SSLContext, password: str) -> int:
    """One page: `call` as 100 with `password`; the code of the bridge's hangup (503: authenticated)."""
    return (await _login_hangup(context, client, password)).code


async def _login_hangup(context: BridgeContext, client: ssl.SSLContext, password: str) -> Hangup:
    port = context.wss_addresses[0][1]
    async with trio_websocket.open_websocket(
        "127.0.0.1", port, "/mccp", use_ssl=client, extra_headers=[(b"Origin", b"https://127.0.0.1")]
    ) as ws:
        await ws.send_message(encode(Call(clr="100", pwd=password, cld="600", sdp=SDP)))
        text = await ws.get_message()
    assert isinstance(text, str)
    message = decode_bridge_untrusted(text)
    assert isinstance(message, Hangup)
    return message


async def test_a_redial_is_answered_by_the_cache_and_a_reload_drops_it(tmp_path: Path) -> None:
    _save(tmp_path, "right")
    config = Config(data_dir=tmp_path, listen="127.0.0.1", wss_port=0, auth_delay=0.0, shutdown_grace=2.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            context: BridgeContext = await nursery.start(
                partial(run_bridge, config, services=answer_503, handle_signals=False)
            )
            client = ssl.create_default_context(cafile=str(config.cert_dir / "server.crt"))
            cache = context.authenticator.cache
            assert await _login(context, client, "right") == 503
            assert (len(cache), cache.hits) == (1, 0)
            assert await _login(context, client, "right") == 503
            assert cache.hits == 1
            assert await _login(context, client, "wrong") == 403
            assert await _login(context, client, "right") == 503
            assert cache.hits == 2
            # `mccp-bridge extension add 100 --password new` then SIGHUP
            _save(tmp_path, "new")
            context.reload()
            assert len(cache) == 0
            assert await _login(context, client, "right") == 403
            assert await _login(context, client, "new") == 503
            assert await _login(context, client, "new") == 503
            assert cache.hits == 3
            assert context.stats.logins_cached == 3  # exported as mccp_bridge_logins_cached
            context.stop()


async def test_logins_beyond_the_kdf_budget_get_503_without_a_password_check(tmp_path: Path) -> None:
    """auth_kdf_concurrency 1, auth_kdf_queue 0: while the one password check slot is taken, a login is
    refused at once with 503 (counted as busy, not as a failed login); once it is free, logins pass."""
    _save(tmp_path, "right")
    config = Config(
        data_dir=tmp_path,
        listen="127.0.0.1",
        wss_port=0,
        auth_delay=0.0,
        shutdown_grace=2.0,
        auth_cache_ttl=0.0,
        auth_kdf_concurrency=1,
        auth_kdf_queue=0,
    )
    release = threading.Event()

    def slow_check(password: str) -> bool:  # stands in for a long scrypt holding the only slot
        release.wait(10)
        return False

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            context: BridgeContext = await nursery.start(
                partial(run_bridge, config, services=answer_503, handle_signals=False)
            )
            client = ssl.create_default_context(cafile=str(config.cert_dir / "server.crt"))
            nursery.start_soon(context.kdf_gate.run, slow_check, "x")
            while context.kdf_gate.running == 0:
                await trio.sleep(0.01)
            refused = await _login_hangup(context, client, "right")
            assert (refused.code, refused.reason) == (503, "Service Unavailable")
            assert (context.stats.refused_busy, context.stats.refused_credentials) == (1, 0)
            release.set()
            while context.kdf_gate.running:
                await trio.sleep(0.01)
            accepted = await _login_hangup(context, client, "right")
            assert (accepted.code, accepted.reason) == (503, "authenticated")
            assert context.stats.refused_busy == 1
            context.stop()
