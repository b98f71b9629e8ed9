"""bridge.app wires the front door's settings into the MCCP front (loopback TLS, in-process bridge).

Origin allow-list, /metrics access (addresses, bearer token), the call timeout, message size and
the plain-WS listener for a TLS-terminating proxy (X-Forwarded-For feeds the login throttle).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import pytest
import trio_websocket
from tests.trio.bridge.test_bridge_app import _config, call, closed, recv, running

import trio
from bridge.app import BridgeContext, CallHandler, server_limits
from bridge.config import Config
from mccp.messages import ErrorReply, Hangup

pytestmark = pytest.mark.timeout(30)
TOKEN = "s3cret-metrics-token-0123456789"


@asynccontextmanager
async def metrics_services(context: BridgeContext) -> AsyncIterator[CallHandler]:
    """Scripted services with a /metrics route (as bridge.services adds one)."""

    async def scrape() -> tuple[int, str, bytes]:
        return 200, "text/plain", b"up 1\n"

    async def refuse(conn: object, call: object) -> None:
        raise AssertionError("no call expected")

    context.routes["/metrics"] = scrape
    yield refuse  # type: ignore[misc]


async def http_status(
    port: int, path: str, headers: list[tuple[str, str]], client: ssl.SSLContext | None
) -> int:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream: trio.abc.Stream = tcp
    if client is not None:
        stream = trio.SSLStream(tcp, client, server_hostname="127.0.0.1", https_compatible=True)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=path, headers=[("Host", f"127.0.0.1:{port}"), *headers])
    await stream.send_all(conn.send(request) or b"")
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                return event.status_code
            assert event is h11.NEED_DATA
            conn.receive_data(bytes(await stream.receive_some()))
    finally:
        await trio.aclose_forcefully(stream)


@asynccontextmanager
async def wss(
    context: BridgeContext, client: ssl.SSLContext, origin: str
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    port = context.wss_addresses[0][1]
    async with trio_websocket.open_websocket(
        "127.0.0.1", port, "/mccp", use_ssl=client, extra_headers=[(b"Origin", origin.encode())]
    ) as ws:
        yield ws


async def test_origin_allow_list(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = _config(tmp_path, allowed_origins=("https://pages.example",))
    with trio.fail_after(20):
        async with running(config) as (context, client):
            port = context.wss_addresses[0][1]
            for origin in ("https://pages.example", f"https://127.0.0.1:{port}", "null"):
                async with wss(context, client, origin) as ws:  # listed, same origin, file://
                    await ws.send_message(call("100", "wrong"))
                    assert await recv(ws) == Hangup(403, "Forbidden")
            with pytest.raises(trio_websocket.ConnectionRejected) as refused:
                async with wss(context, client, "https://evil.example"):
                    pass
            assert refused.value.status_code == 403
            assert context.stats.server.refused_origin == 1
    assert "allowed_origins is empty" not in caplog.text


async def test_empty_origin_list_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "bridge.app")
    with trio.fail_after(20):
        async with (
            running(_config(tmp_path)) as (context, client),
            wss(context, client, "https://evil.example") as ws,
        ):
            await ws.send_message(call("100", "wrong"))
            assert await recv(ws) == Hangup(403, "Forbidden")
    assert "allowed_origins is empty: any web site may open the WebSocket" in caplog.text


@pytest.mark.parametrize(
    ("settings", "headers", "status"),
    [
        ({}, [], 200),  # loopback by default
        ({"metrics_allow": ("10.0.0.0/8",)}, [], 403),
        ({"metrics_allow": ()}, [("Authorization", f"Bearer {TOKEN}")], 403),  # no token set
        ({"metrics_allow": (), "metrics_token": TOKEN}, [("Authorization", f"Bearer {TOKEN}")], 200),
        ({"metrics_allow": (), "metrics_token": TOKEN}, [("Authorization", "Bearer wrong")], 403),
        ({"metrics_allow": (), "metrics_token": TOKEN}, [], 403),
    ],
)
async def test_metrics_access(
    tmp_path: Path, settings: dict[str, object], headers: list[tuple[str, str]], status: int
) -> None:
    with trio.fail_after(20):
        async with running(_config(tmp_path, **settings), metrics_services) as (context, client):
            port = context.wss_addresses[0][1]
            assert await http_status(port, "/metrics", headers, client) == status
            assert await http_status(port, "/", [], client) == 200
            assert context.stats.server.refused_route == (status == 403)


async def test_call_timeout_and_message_size_come_from_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path, call_timeout=1.0, max_message_bytes=2048)
    assert server_limits(config).call_timeout == 1.0
    with trio.fail_after(20):
        async with running(config) as (context, client):
            async with wss(context, client, "null") as ws:
                await ws.send_message("x" * 3000)
                reply = await recv(ws)
                assert isinstance(reply, ErrorReply)
                assert reply.code == 413
                assert await closed(ws)
            async with wss(context, client, "null") as ws:
                assert await recv(ws) == Hangup(408, "no call request in time")
                assert await closed(ws)


def test_server_limits_follow_every_front_setting(tmp_path: Path) -> None:
    config = Config(
        data_dir=tmp_path,
        max_connections_per_address=3,
        max_handshakes=7,
        handshake_timeout=4.0,
        call_timeout=5.0,
        max_message_bytes=4096,
        message_rate=2.5,
        message_burst=6,
        ping_interval=30.0,
        pong_timeout=20.0,
    )
    limits = server_limits(config)
    assert (
        limits.max_connections_per_address,
        limits.max_handshakes,
        limits.handshake_timeout,
        limits.call_timeout,
        limits.max_frame_bytes,
        limits.max_messages_per_second,
        limits.message_burst,
        limits.ping_interval,
        limits.pong_timeout,
    ) == (3, 7, 4.0, 5.0, 4096, 2.5, 6.0, 30.0, 20.0)


async def test_plain_listener_behind_a_proxy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The plain listener: the page's address comes from the trusted proxy's X-Forwarded-For and
    is what the login throttle counts; an untrusted peer is closed at accept."""
    caplog.set_level(logging.INFO)
    config = _config(
        tmp_path, plain_ws_port=0, auth_max_failures=1, auth_lockout_failures=2, auth_lockout=60.0
    )
    with trio.fail_after(20):
        async with running(config) as (context, _):
            host, port = context.plain_ws_addresses[0]
            assert host == "127.0.0.1"

            async def login(forwarded: str, pwd: str, clr: str = "100") -> Hangup:
                async with trio_websocket.open_websocket(
                    "127.0.0.1",
                    port,
                    "/mccp",
                    use_ssl=False,
                    extra_headers=[(b"X-Forwarded-For", forwarded.encode())],
                ) as ws:
                    await ws.send_message(call(clr, pwd))
                    reply = await recv(ws)
                    assert isinstance(reply, Hangup)
                    return reply

            # Two failures for the page at 192.0.2.50 lock that address out, not the proxy's.
            assert (await login("192.0.2.50", "wrong")).code == 403
            assert (await login("192.0.2.50", "wrong")).code == 429
            assert (await login("192.0.2.50", "right")).code == 429
            assert "[192.0.2.50:0]" in caplog.text
            # Another page behind the same proxy is its own key (extension 100 itself is locked).
            assert (await login("192.0.2.51", "wrong", "101")).code == 403
            # /metrics through the proxy is judged on the page's address, not the proxy's loopback.
            xff = [("X-Forwarded-For", "192.0.2.50")]
            assert await http_status(port, "/", xff, None) == 200
            assert await http_status(port, "/metrics", xff, None) == 404  # no route: reached it
            assert context.stats.server.refused_untrusted_proxy == 0


async def test_plain_listener_refuses_untrusted_peers(tmp_path: Path) -> None:
    config = _config(tmp_path, plain_ws_port=0, trusted_proxies=("10.9.9.9",))
    with trio.fail_after(20):
        async with running(config) as (context, _):
            port = context.plain_ws_addresses[0][1]
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            data = b""
            try:
                await tcp.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                while chunk := await tcp.receive_some():
                    data += chunk
            except trio.BrokenResourceError:  # reset: the request was never read
                pass
            await tcp.aclose()
            assert data == b""
            assert context.stats.server.refused_untrusted_proxy == 1


def test_front_counters_are_exported() -> None:
    from bridge.app import BridgeStats
    from bridge.metrics import BridgeMetrics

    stats = BridgeStats()
    front = stats.server
    front.connections_open, front.handshakes_open = 7, 3
    front.refused_per_address, front.handshakes_evicted, front.refused_untrusted_proxy = 11, 5, 2
    front.refused_origin, front.refused_route, front.rate_limited = 4, 6, 9
    text = BridgeMetrics(active_calls=lambda: 0, stats=lambda: stats).exposition().decode()
    for line in (
        'mccp_bridge_front_open{phase="all"} 7.0',
        'mccp_bridge_front_open{phase="handshake"} 3.0',
        'mccp_bridge_front_refused_total{reason="per_address"} 11.0',
        'mccp_bridge_front_refused_total{reason="handshake_cap"} 5.0',
        'mccp_bridge_front_refused_total{reason="untrusted_proxy"} 2.0',
        'mccp_bridge_front_refused_total{reason="origin"} 4.0',
        'mccp_bridge_front_refused_total{reason="route"} 6.0',
        'mccp_bridge_front_failures_total{cause="rate_limited"} 9.0',
    ):
        assert line in text, line
