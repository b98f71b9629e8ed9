"""Memory per call, component by component: where the bridge's ~95 KiB per established call goes.

    .venv/bin/python -m bench.memory [--n 200] [--only dtls,srtp,...] [--out bench/results/x.json]
    (the tls_ws component opens sockets: run it under scripts/netns_run.sh)

Each component runs in a fresh subprocess (so that one component's freed memory cannot hide the
next one's growth). There it builds a few objects first (imports, shared contexts, caches: the
per-process cost, not the per-call one), then N objects that it keeps, and reports

* `rss_kib`: (RSS after the N - RSS before) / N, RSS from /proc/self/statm, after `gc.collect()`:
  every allocator counted (OpenSSL's and libsrtp's mallocs included), fragmentation included;
* `traced_kib`: the same for N more objects built under `tracemalloc`: Python's own allocations
  only (objects, bytes, dicts, frames), not what C libraries malloc.

The components are what one established call holds (bench.relay's calls: answered, DTLS done,
SRTP keyed, media both ways):

    dtls           our DtlsEndpoint (the DTLS server, as with browsers) after the handshake
    dtls_released  the same once the grace period has passed and OpenSSL's objects are released
    srtp           one call's SrtpTx + SrtpRx (GCM, `srtp_pair`), each with its stream after RTP
                   and RTCP
    ice            an IceLiteAgent after a nominating check
    relay          a Relay with its codec map and reception stats after packets both ways (SRTP
                   sessions shared, not counted)
    media_session  open_media() + the SIP answer: sockets, SDP strings, Negotiation, ICE agent,
                   Relay, an unconnected DtlsEndpoint (so it overlaps ice, relay and part of dtls)
    tls_ws         the server side of one page connection: TCP + TLS (bridge.certs context) +
                   h11 head + trio-websocket + the MCCP connection's tasks, through the real
                   mccp.server.serve_mccp (the client side runs in a child process)
    ws_plain       the same without TLS (the difference is what TLS costs)
    sip            the SIP objects of an answered outgoing call: INVITE, 200, ACK (parsed),
                   Dialog, InviteClientTransaction (Accepted), the call's event queue
    trio_tasks     the nurseries and tasks of one call (2 nurseries, 5 tasks, all blocked, spawned
                   with start_soon as in the bridge; 5 and 13 before issue 6's diet)
    call           the whole: RSS growth of a real `mccp-bridge serve` (bench.processes, scrypt N
                   2^10) per call set up through its real signalling (bench.calls: WSS + MCCP,
                   ICE, DTLS, SIP to bench.phone_leg), measured like bench.relay's `rss per call`
                   (baseline before the first call, 12 s after the set-up) but with no media and
                   no rtpengine: quick, and the number the components should add up to (with what
                   malloc cannot give back: the DTLS handshakes run in a thread of their own,
                   bridge.openssl_thread, so that they leave no holes in the main heap)

bench.relay gives the total (RSS of the real bridge with N calls up, minus before, over N); the
sum of these parts says how much of it is explained.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import inspect
import json
import math
import os
import secrets
import ssl
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio.testing

import trio
from bench.browser_leg import OFFER_TEMPLATE
from rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, DtlsState
from rtp.ice_lite import IceLiteAgent
from rtp.ports import PortAllocator
from rtp.relay import Relay
from rtp.sdp_answer import answer_browser_offer, codec_map, offer_for_sip, parse_sip_answer
from rtp.srtp import SrtpProfile, SrtpRx, SrtpTx, srtp_pair
from rtp.stun import binding_request

PAGE = os.sysconf("SC_PAGE_SIZE")
WARM = 5
SERVER_CERT = DtlsCertificate.generate("bench-bridge")
BROWSER_CERT = DtlsCertificate.generate("bench-browser")

# The harness's Chromium-like offer (bench.browser_leg), with fixed ICE credentials and port.
OFFER = OFFER_TEMPLATE.format(
    sid=4611731400430051336,
    port=40000,
    ufrag="abcd",
    pwd="abcdefghijklmnopqrstuvwx",
    fingerprint=BROWSER_CERT.fingerprint_sha256,
    ssrc=1234,
).replace("\n", "\r\n")

SIP_ANSWER = """v=0
o=phone 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio 30000 RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
a=ptime:20
a=sendrecv
""".replace("\n", "\r\n")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def rtp(seq: int, ssrc: int, pt: int = 0) -> bytes:
    return (
        bytes([0x80, pt]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") + ssrc.to_bytes(4, "big")
    )


def rtcp_rr(ssrc: int) -> bytes:
    return bytes([0x80, 201, 0, 1]) + ssrc.to_bytes(4, "big")


# --- the components: each builds one call's worth and returns what the call would keep ---------


def handshake(server: DtlsEndpoint, client: DtlsEndpoint, now: float) -> None:
    client.start(now)
    for _ in range(20):
        for d in client.outgoing():
            server.feed_untrusted(d, now)
        for d in server.outgoing():
            client.feed_untrusted(d, now)
        if server.state is DtlsState.CONNECTED and client.state is DtlsState.CONNECTED:
            return
    raise RuntimeError("no handshake")


def build_dtls(release: bool) -> Callable[[], object]:
    def build() -> object:
        ours = DtlsEndpoint(DtlsRole.SERVER, SERVER_CERT, ("sha-256", BROWSER_CERT.fingerprint_sha256))
        browser = DtlsEndpoint(DtlsRole.CLIENT, BROWSER_CERT, ("sha-256", SERVER_CERT.fingerprint_sha256))
        handshake(ours, browser, 0.0)
        ours.keying_material()  # what media does at once
        if release:
            ours.handle_timeout(3600.0)  # long after any grace period
        return ours

    return build


PROFILE = SrtpProfile.AEAD_AES_128_GCM
_KEY_LEN = PROFILE.key_length + PROFILE.salt_length


def build_srtp() -> object:
    ours_key, theirs_key = secrets.token_bytes(_KEY_LEN), secrets.token_bytes(_KEY_LEN)
    tx, rx = srtp_pair(PROFILE, ours_key, theirs_key)
    peer = SrtpTx(PROFILE, theirs_key)
    tx.protect(rtp(1, 1) + bytes(160))
    tx.protect_rtcp(rtcp_rr(1))
    rx.unprotect(peer.protect(rtp(1, 2) + bytes(160)))
    rx.unprotect_rtcp(peer.protect_rtcp(rtcp_rr(2)))
    return tx, rx


def build_ice() -> object:
    ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
    agent = IceLiteAgent(ufrag, pwd, "abcd", "abcdefghijklmnopqrstuvwx")
    check = binding_request(
        secrets.token_bytes(12),
        username=f"{ufrag}:abcd",
        key=pwd.encode(),
        priority=2122194687,
        ice_controlling=1,
        use_candidate=True,
    )
    if agent.handle_stun_untrusted(check, ("127.0.0.1", 40000), 0.0) is None:
        raise RuntimeError("check refused")
    return agent


class _RelayParts:
    def __init__(self) -> None:
        browser = answer_browser_offer(
            OFFER,
            ice_ufrag="wxyz",
            ice_pwd="0123456789abcdef01234567",
            fingerprint_sha256=SERVER_CERT.fingerprint_sha256,
            candidates=[("127.0.0.1", 20000)],
            session_id=1,
        )[1]
        self.map = codec_map(
            browser,
            parse_sip_answer(SIP_ANSWER, offer_for_sip(host="127.0.0.1", rtp_port=20002, session_id=1)),
        )
        key = secrets.token_bytes(_KEY_LEN)
        self.tx, self.rx, self.peer = SrtpTx(PROFILE, key), SrtpRx(PROFILE, key), SrtpTx(PROFILE, key)
        self.seq = 0


_relay_parts: _RelayParts | None = None


def build_relay() -> object:
    global _relay_parts
    if _relay_parts is None:
        _relay_parts = _RelayParts()
    p = _relay_parts
    relay = Relay(
        p.map,
        ssrc=secrets.randbits(32),
        initial_sequence=p.seq,
        initial_timestamp=0,
        srtp_tx=p.tx,
        srtp_rx=p.rx,
    )
    for _ in range(3):
        p.seq += 1
        relay.browser_packet(p.peer.protect(rtp(p.seq, 1234, 0) + bytes(160)), 0.02 * p.seq)
        relay.sip_rtp(bytearray(rtp(p.seq, 99, 0) + bytes(160)), 0.02 * p.seq)
    p.seq += 3
    return relay


class _Ports:
    """The process's port allocator and an exit stack that keeps every `open_media` open."""

    def __init__(self) -> None:
        self.allocator = PortAllocator(20000, 60000, "127.0.0.1")
        self.stack = contextlib.AsyncExitStack()
        self.plane: Any = None


async def build_media_session(ports: _Ports) -> object:
    from rtp.media import open_media

    extra: dict[str, Any] = {}
    if "plane" in inspect.signature(open_media).parameters:  # the shared media plane (rtp.plane)
        if ports.plane is None:
            from rtp.plane import open_media_plane

            ports.plane = await ports.stack.enter_async_context(open_media_plane())
        extra["plane"] = ports.plane
    media = await ports.stack.enter_async_context(
        open_media(
            ports.allocator,
            OFFER,
            advertise_hosts=["127.0.0.1"],
            sip_host="127.0.0.1",
            certificate=SERVER_CERT,
            **extra,
        )
    )
    media.set_sip_answer(SIP_ANSWER)
    media.confirm_browser_answer(OFFER)
    return media


INVITE = (
    "INVITE sip:101@127.0.0.1:5090 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{token};rport\r\n"
    "Max-Forwards: 70\r\n"
    'From: "100" <sip:100@127.0.0.1>;tag={token}\r\n'
    "To: <sip:101@127.0.0.1>\r\n"
    "Call-ID: {token}@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:100@127.0.0.1:5060>\r\n"
    "User-Agent: mccp-bridge\r\n"
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)
OK = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{token};rport=5060;received=127.0.0.1\r\n"
    'From: "100" <sip:100@127.0.0.1>;tag={token}\r\n'
    "To: <sip:101@127.0.0.1>;tag=phone{token}\r\n"
    "Call-ID: {token}@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:101@127.0.0.1:5090>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)


def build_sip() -> object:
    from sip.dialog import Dialog
    from sip.headers import NameAddr, parse_via
    from sip.layer import client_key
    from sip.message import Request, Response
    from sip.parser import parse_datagram_untrusted
    from sip.timers import TimerConfig
    from sip.transaction import InviteClientTransaction
    from sip.uri import SipUri

    token = secrets.token_hex(8)
    offer = offer_for_sip(host="127.0.0.1", rtp_port=20002, session_id=1)
    invite = parse_datagram_untrusted(INVITE.format(token=token, length=len(offer), body=offer).encode())
    ok = parse_datagram_untrusted(OK.format(token=token, length=len(SIP_ANSWER), body=SIP_ANSWER).encode())
    assert isinstance(invite, Request)
    assert isinstance(ok, Response)
    tx = InviteClientTransaction(client_key(invite), invite, ("127.0.0.1", 5090), False, TimerConfig())
    tx.start(0.0)
    tx.receive(ok, 0.1)
    dialog = Dialog.from_uac_response(invite, ok, NameAddr(SipUri("127.0.0.1", "100")))
    ack = dialog.ack(ok, parse_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK" + token))
    from sip.calls import CallEvents

    return invite, ok, ack, dialog, tx, CallEvents(), offer.encode()


# --- the trio components ------------------------------------------------------------------------


async def _blocked() -> None:
    await trio.sleep_forever()


async def _one_call_tasks(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    # This task is the page's connection task (mccp.server, running bridge.call.run_call and its
    # page loop); the connection's nursery holds the WebSocket's reader, the call's nursery the
    # SIP task, ice_dtls and relay (SipUA.call's response reader ends with the 200's ACK). They
    # are spawned with start_soon, as the bridge does: `nursery.start` keeps its TaskStatus (an
    # inner nursery and its cancel scope, ~1.3 KiB) in the started task's frame for its life.
    async with trio.open_nursery() as conn:
        conn.start_soon(_blocked)
        async with trio.open_nursery() as call:
            for _ in range(3):
                call.start_soon(_blocked)
            await trio.testing.wait_all_tasks_blocked()
            task_status.started()
            del task_status  # not kept in this frame either (see above)
            await trio.sleep_forever()


# --- measuring ----------------------------------------------------------------------------------

TOP = 0  # --top: print the N biggest allocation sites of the traced objects (stderr)


def _traced(n: int, base: int) -> float:
    """KiB per object traced since `tracemalloc.start()`; with --top, where they were allocated."""
    gc.collect()
    if TOP:
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, __file__)])
        for stat in snapshot.statistics("lineno")[:TOP]:
            frame = stat.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("/src/")[-1]
            print(
                f"  {stat.size / n / 1024:7.2f} KiB {stat.count / n:6.1f}  {where}:{frame.lineno}",
                file=sys.stderr,
            )
    traced = (tracemalloc.get_traced_memory()[0] - base) / n / 1024
    tracemalloc.stop()
    return traced


def measure_sync(build: Callable[[], object], n: int) -> dict[str, float]:
    keep = [build() for _ in range(WARM)]
    gc.collect()
    before = rss_bytes()
    keep += [build() for _ in range(n)]
    gc.collect()
    rss = (rss_bytes() - before) / n / 1024
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    keep += [build() for _ in range(n)]
    traced = _traced(n, base)
    del keep
    return {"rss_kib": round(rss, 2), "traced_kib": round(traced, 2)}


async def measure_async(build: Callable[[], Any], n: int) -> dict[str, float]:
    keep = [await build() for _ in range(WARM)]
    gc.collect()
    before = rss_bytes()
    keep += [await build() for _ in range(n)]
    gc.collect()
    rss = (rss_bytes() - before) / n / 1024
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    keep += [await build() for _ in range(n)]
    traced = _traced(n, base)
    del keep
    return {"rss_kib": round(rss, 2), "traced_kib": round(traced, 2)}


async def measure_tasks(n: int) -> dict[str, float]:
    async with trio.open_nursery() as nursery:

        async def build() -> None:
            await nursery.start(_one_call_tasks)

        result = await measure_async(build, n)
        nursery.cancel_scope.cancel()
    return result


async def measure_media(n: int) -> dict[str, float]:
    ports = _Ports()
    async with ports.stack:
        return await measure_async(lambda: build_media_session(ports), n)


# --- call: the real bridge in a subprocess ------------------------------------------------------


async def measure_call(n: int) -> dict[str, float]:
    from bench.browser_leg import BrowserSocket
    from bench.calls import bridge_calls
    from bench.phone_leg import Phone
    from bench.processes import PHONE, PHONE_PASSWORD, rss_kib_all, run_bridge

    bsock = await BrowserSocket.open()
    phone_rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await phone_rtp.bind(("127.0.0.1", 0))
    phone = await Phone.open(int(phone_rtp.getsockname()[1]), PHONE)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bsock.run)
        async with run_bridge(scrypt_n=1024, nice=0, workers=1) as bridge:
            await phone.register(("127.0.0.1", bridge.sip_port), PHONE_PASSWORD)
            nursery.start_soon(phone.serve)
            await trio.sleep(0.5)
            before = rss_kib_all(bridge.pids())
            async with bridge_calls(bridge.wss_port, bsock, phone, n) as calls:
                await trio.sleep(12.0)  # bench.relay's settle
                after = rss_kib_all(bridge.pids())
                up = len(calls.flows)
        nursery.cancel_scope.cancel()
    if not up:
        raise RuntimeError(f"none of {n} calls was set up")
    # Per established call, as bench.relay (a set-up can fail on a loaded machine: counted).
    return {"rss_kib": round((after - before) / up, 2), "traced_kib": math.nan, "failed": n - up}


# --- tls_ws: the server here, the clients in a child process ------------------------------------


async def _hold(conn: Any) -> None:
    from mccp.server import PageGone

    with contextlib.suppress(PageGone):
        while True:
            await conn.receive()


async def measure_tls_ws(n: int, tls: bool = True) -> dict[str, float]:
    from bridge.certs import generate_self_signed, load_into, new_server_context
    from mccp.server import ServerLimits, serve_mccp

    with tempfile.TemporaryDirectory() as tmp:
        now = dt.datetime.now(dt.UTC)
        generate_self_signed(Path(tmp), ["127.0.0.1"], now=now)
        context: ssl.SSLContext | None = new_server_context()
        assert context is not None
        load_into(context, Path(tmp) / "server.crt", Path(tmp) / "server.key", now=now)
        if not tls:
            context = None
    limits = ServerLimits(max_connections_per_address=1 << 20, call_timeout=3600.0, ping_interval=3600.0)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            lambda task_status: serve_mccp(
                _hold,
                host="127.0.0.1",
                port=0,
                ssl_context=context,
                page=b"",
                limits=limits,
                task_status=task_status,
            )
        )
        port = bound[0][1]
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "bench.memory", "--client", str(port), *([] if tls else ["--plain"])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        lines = _Lines(proc.stdout)

        async def open_clients(count: int) -> None:
            assert proc.stdin is not None
            await proc.stdin.send_all(f"{count}\n".encode())
            if await lines.next() != "ok":
                raise RuntimeError("client failed")
            await trio.sleep(0.5)  # the server's side settles (ws handshake tasks end)

        await open_clients(WARM)
        gc.collect()
        before = rss_bytes()
        await open_clients(n)
        gc.collect()
        rss = (rss_bytes() - before) / n / 1024
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        await open_clients(n)
        traced = _traced(n, base)
        proc.kill()
        await proc.wait()
        nursery.cancel_scope.cancel()
    return {"rss_kib": round(rss, 2), "traced_kib": round(traced, 2)}


class _Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream, self._buf = stream, b""

    async def next(self) -> str:
        while b"\n" not in self._buf:
            data = await self._stream.receive_some(4096)
            if not data:
                raise EOFError
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()


async def client_main(port: int, tls: bool) -> None:
    """The page side for tls_ws: open `count` WSS connections per line read on stdin, hold them."""
    import trio_websocket

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    stdin = _Lines(trio.lowlevel.FdStream(os.dup(0)))
    out = trio.lowlevel.FdStream(os.dup(1))

    async def one(nursery: trio.Nursery, task_status: trio.TaskStatus[None]) -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream: trio.abc.Stream = tcp
        if tls:
            stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1", https_compatible=True)
        await trio_websocket.wrap_client_stream(nursery, stream, "127.0.0.1", "/mccp")
        task_status.started()

    async with trio.open_nursery() as nursery:
        while True:
            try:
                count = int(await stdin.next())
            except EOFError:
                nursery.cancel_scope.cancel()
                return
            for _ in range(count):
                await nursery.start(one, nursery)
            await out.send_all(b"ok\n")


# --- main -----------------------------------------------------------------------------------------

SYNC: dict[str, Callable[[], object]] = {
    "dtls": build_dtls(release=False),
    "dtls_released": build_dtls(release=True),
    "srtp": build_srtp,
    "ice": build_ice,
    "relay": build_relay,
    "sip": build_sip,
}
TRIO: dict[str, Callable[[int], Any]] = {
    "media_session": measure_media,
    "tls_ws": measure_tls_ws,
    "ws_plain": lambda n: measure_tls_ws(n, tls=False),
    "trio_tasks": measure_tasks,
    "call": measure_call,
}
ORDER = [
    "dtls",
    "dtls_released",
    "srtp",
    "ice",
    "relay",
    "media_session",
    "tls_ws",
    "ws_plain",
    "sip",
    "trio_tasks",
    "call",
]


def run_component(name: str, n: int) -> dict[str, float]:
    if name in SYNC:
        return measure_sync(SYNC[name], n)
    result: dict[str, float] = trio.run(TRIO[name], n)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="objects per component")
    ap.add_argument("--only", default=",".join(ORDER), help="comma-separated components")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--top", type=int, default=0, help="print each component's N biggest allocation sites")
    ap.add_argument("--component", help=argparse.SUPPRESS)
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        trio.run(client_main, args.client, not args.plain)
        return
    if args.component:
        global TOP
        TOP = args.top
        print(json.dumps(run_component(args.component, args.n)))
        return
    results: dict[str, dict[str, float]] = {}
    print(f"{'component':<15} {'RSS KiB/call':>13} {'traced KiB/call':>16}")
    for name in args.only.split(","):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.memory",
                "--component",
                name,
                "--n",
                str(args.n),
                "--top",
                str(args.top),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(f"{name:<15} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        if args.top:
            print(out.stderr, end="")
        print(
            f"{name:<15} {results[name]['rss_kib']:>13.1f} {results[name]['traced_kib']:>16.1f}", flush=True
        )
    if args.out:
        args.out.write_text(json.dumps({"n": args.n, "components": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
