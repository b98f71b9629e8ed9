"""The browser side of the benchmark's calls: MCCP over WSS, an ICE check, DTLS, SRTP keys.

Lean on purpose (hundreds of calls in one Trio process): every call shares ONE UDP socket, and
datagrams are dispatched to the call by their source port (each call has its own bridge port).
Each call is a task that holds its WebSocket open (trio-websocket answers the bridge's pings) until
it is told to hang up. The ICE/DTLS reader can be paused while the C blaster owns the socket; the
consent task keeps sending STUN checks every `CONSENT_INTERVAL` seconds (RFC 7675), as browsers do.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import ssl
import struct
from dataclasses import dataclass, field

import trio_websocket
import wsproto.utilities

import trio
from rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, DtlsState
from rtp.srtp import SrtpProfile, keys_from_dtls
from rtp.stun import binding_request

CONSENT_INTERVAL = 5.0
MAX_PER_ADDRESS = 12  # mccp.server Limits.max_connections_per_address is 16
CERT = DtlsCertificate.generate("bench-browser")
OFFER_TEMPLATE = """v=0
o=- {sid} 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=extmap-allow-mixed
a=msid-semantic: WMS bench
m=audio {port} UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 127.0.0.1
a=rtcp:9 IN IP4 0.0.0.0
a=candidate:1 1 udp 2122194687 127.0.0.1 {port} typ host generation 0 network-id 1
a=ice-ufrag:{ufrag}
a=ice-pwd:{pwd}
a=ice-options:trickle
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendrecv
a=msid:bench bench-track
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:{ssrc} cname:bench
"""


class CallFailed(Exception):
    """A call did not get set up (MCCP hangup/error, timeout, DTLS failure)."""


def _attr(sdp: str, name: str) -> str:
    match = re.search(rf"^a={name}:(.*?)\r?$", sdp, re.MULTILINE)
    if match is None:
        raise CallFailed(f"no a={name} in the bridge's answer")
    return match.group(1).strip()


def _media_port(sdp: str) -> int:
    match = re.search(r"^m=audio (\d+) ", sdp, re.MULTILINE)
    if match is None:
        raise CallFailed("no m=audio in SDP")
    return int(match.group(1))


def session_id(sdp: str) -> str:
    """The o= line's session id (the bridge uses the same one in its SIP offer)."""
    match = re.search(r"^o=\S+ (\d+) ", sdp, re.MULTILINE)
    return match.group(1) if match else ""


@dataclass
class Timings:
    """trio.current_time() of each step of one call's set-up (None if not reached)."""

    connect: float = 0.0  # TCP connect, TLS handshake and WebSocket upgrade begin
    sent_call: float = 0.0
    progress: float | None = None
    dtls_done: float | None = None
    answer: float | None = None


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux <netinet/in.h>; not in every Python build


@dataclass
class BrowserCall:
    """One call's browser-side state (filled as the set-up goes)."""

    number: int
    ssrc: int
    ufrag: str = field(default_factory=lambda: os.urandom(4).hex())
    pwd: str = field(default_factory=lambda: os.urandom(12).hex())
    bridge_port: int = 0
    bridge_ufrag: str = ""
    bridge_pwd: str = ""
    session_id: str = ""
    dtls: DtlsEndpoint | None = None
    profile: SrtpProfile | None = None
    tx_key: bytes = b""  # master key || salt, browser -> bridge
    rx_key: bytes = b""  # bridge -> browser
    timings: Timings = field(default_factory=Timings)
    connected: trio.Event = field(default_factory=trio.Event)
    hangup: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    end_code: int | None = None  # the bridge's hangup code; negative: WebSocket close code
    dropped: bool = False  # the bridge ended the call before the harness hung up
    local: str = ""  # the WebSocket's local HOST:PORT (the bridge's log names the call by it)
    local_ip: str = "127.0.0.1"  # the browser leg's address (its own with `BrowserSocket(spread=True)`)


class BrowserSocket:
    """The shared browser-side UDP socket: ICE checks, DTLS per call, consent, dispatch by the
    bridge's port and the address the datagram came to.

    `spread`: each call's browser leg has an address of its own (127.2.X.Y, by call number), sent
    from with IP_PKTINFO on this one socket (bound to 0.0.0.0), as real browsers each have their
    own: a bridge serving every browser leg on one port (`rtp_browser_port`) tells them apart by
    it. Without, every leg is 127.0.0.1 and the bridge's per-call port tells them apart."""

    def __init__(self, sock: trio.socket.SocketType, spread: bool = False) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self.spread = spread
        self.calls: dict[tuple[str, int], BrowserCall] = {}  # (our address, the bridge's port)
        self._reader_scope: trio.CancelScope | None = None
        self._resume = trio.Event()
        self._resume.set()

    @classmethod
    async def open(cls, spread: bool = False) -> BrowserSocket:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("0.0.0.0" if spread else "127.0.0.1", 0))  # the loopback-only netns
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4 << 20)
        if spread:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        return cls(sock, spread)

    def address_for(self, number: int) -> str:
        """Call `number`'s browser address: 127.2.X.Y when spread (the blaster keys on X.Y)."""
        return f"127.2.{number // 250}.{1 + number % 250}" if self.spread else "127.0.0.1"

    async def send(self, call: BrowserCall, data: bytes) -> None:
        dest = ("127.0.0.1", call.bridge_port)
        if not self.spread:
            await self.sock.sendto(data, dest)
            return
        info = struct.pack("@i4s4s", 0, socket.inet_aton(call.local_ip), bytes(4))  # struct in_pktinfo
        await self.sock.sendmsg([data], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, dest)

    def offer(self, call: BrowserCall) -> str:
        return OFFER_TEMPLATE.format(
            sid=int.from_bytes(os.urandom(7), "big"),
            port=self.port,
            ufrag=call.ufrag,
            pwd=call.pwd,
            fingerprint=CERT.fingerprint_sha256,
            ssrc=call.ssrc,
        ).replace("\n", "\r\n")

    async def send_check(self, call: BrowserCall) -> None:
        request = binding_request(
            os.urandom(12),
            username=f"{call.bridge_ufrag}:{call.ufrag}",
            key=call.bridge_pwd.encode(),
            priority=2122194687,
            ice_controlling=int.from_bytes(os.urandom(8), "big"),
            use_candidate=True,
        )
        await self.send(call, request)

    async def flush(self, call: BrowserCall) -> None:
        if call.dtls is not None:
            for datagram in call.dtls.outgoing():
                await self.send(call, datagram)

    def pause(self) -> None:
        """Stop reading (the blaster owns the socket's input now)."""
        self._resume = trio.Event()
        if self._reader_scope is not None:
            self._reader_scope.cancel()

    def resume(self) -> None:
        self._resume.set()

    async def run(self) -> None:
        """Read and dispatch (paused by `pause`), plus consent checks and DTLS timers."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._consent)
            nursery.start_soon(self._timers)
            while True:
                await self._resume.wait()
                with trio.CancelScope() as self._reader_scope:
                    await self._read()

    async def _read(self) -> None:
        while True:
            to = "127.0.0.1"
            if self.spread:
                data, ancillary, _flags, src = await self.sock.recvmsg(2048, socket.CMSG_SPACE(12))
                for level, kind, value in ancillary:
                    if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                        to = socket.inet_ntoa(value[8:12])  # in_pktinfo.ipi_addr: where it came to
            else:
                data, src = await self.sock.recvfrom(2048)
            call = self.calls.get((to, int(src[1])))
            if call is None or not data:
                continue
            if 20 <= data[0] <= 63 and call.dtls is not None:
                call.dtls.feed_untrusted(data, trio.current_time())
                await self.flush(call)
                self._check_connected(call)

    def _check_connected(self, call: BrowserCall) -> None:
        dtls = call.dtls
        if dtls is None or call.connected.is_set():
            return
        if dtls.state is DtlsState.CONNECTED:
            call.profile = dtls.srtp_profile
            call.tx_key, call.rx_key = keys_from_dtls(call.profile, dtls.keying_material(), dtls.is_client)
            call.timings.dtls_done = trio.current_time()
            call.connected.set()
        elif dtls.state is not DtlsState.HANDSHAKING:
            call.connected.set()  # failed: the waiter checks `profile`

    async def _timers(self) -> None:
        while True:
            await trio.sleep(0.25)
            now = trio.current_time()
            for call in list(self.calls.values()):
                if call.dtls is not None and not call.connected.is_set():
                    call.dtls.handle_timeout(now)
                    await self.flush(call)

    async def _consent(self) -> None:
        while True:
            calls = [c for c in self.calls.values() if c.connected.is_set()]
            if not calls:
                await trio.sleep(CONSENT_INTERVAL)
                continue
            gap = CONSENT_INTERVAL / len(calls)
            for call in calls:
                if (call.local_ip, call.bridge_port) in self.calls:
                    await self.send_check(call)
                await trio.sleep(gap)


@functools.cache
def client_ssl_context() -> ssl.SSLContext:
    """One client context for every call: no CA store (the bridge's certificate is self-signed and
    not checked). `ssl.create_default_context()` per call loaded the system CA bundle each time,
    ~110 ms of harness CPU per call, most of the harness's set-up cost."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def local_host(number: int) -> str:
    """The loopback source address of call `number`'s WebSocket (the bridge admits
    `MAX_PER_ADDRESS` connections per source address; a NAT or a load generator needs several)."""
    k = number // MAX_PER_ADDRESS
    return f"127.0.{1 + k // 250}.{1 + k % 250}"


async def run_call(
    bsock: BrowserSocket,
    call: BrowserCall,
    wss_port: int,
    caller: str,
    password: str,
    callee: str,
    *,
    timeout: float = 30.0,
    task_status: trio.TaskStatus[BrowserCall] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Place one call and hold it until `call.hangup` is set; `task_status.started(call)` once it
    is answered and DTLS is connected. Raises CallFailed if the set-up fails."""
    try:
        await _run_call(
            bsock, call, wss_port, caller, password, callee, timeout=timeout, task_status=task_status
        )
    finally:
        bsock.calls.pop((call.local_ip, call.bridge_port), None)
        call.ended.set()


async def _run_call(
    bsock: BrowserSocket,
    call: BrowserCall,
    wss_port: int,
    caller: str,
    password: str,
    callee: str,
    *,
    timeout: float,
    task_status: trio.TaskStatus[BrowserCall],
) -> None:
    started = False
    failure = ""
    try:
        async with trio.open_nursery() as ws_nursery:
            with trio.fail_after(timeout):
                call.timings.connect = trio.current_time()
                tcp = await trio.open_tcp_stream("127.0.0.1", wss_port, local_address=local_host(call.number))
                host, port = tcp.socket.getsockname()[:2]
                call.local = f"{host}:{port}"
                tls = trio.SSLStream(
                    tcp, client_ssl_context(), server_hostname="127.0.0.1", https_compatible=True
                )
                ws = await trio_websocket.wrap_client_stream(
                    ws_nursery, tls, "127.0.0.1", "/mccp", extra_headers=[(b"Origin", b"https://127.0.0.1")]
                )
            try:
                with trio.fail_after(timeout):
                    await _set_up(bsock, call, ws, caller, password, callee, timeout)
                task_status.started(call)
                started = True
                await _hold(call, ws)
            finally:
                with trio.move_on_after(2, shield=True):
                    await ws.aclose()
    except* (
        CallFailed,
        trio_websocket.ConnectionClosed,
        trio_websocket.HandshakeError,
        wsproto.utilities.LocalProtocolError,  # trio-websocket answering a ping while closing
        OSError,
        trio.BrokenResourceError,
        trio.TooSlowError,
    ) as group:
        failure = "; ".join(
            str(e) if isinstance(e, CallFailed) else f"{type(e).__name__} {e}" for e in group.exceptions
        )
    if failure and not started:
        raise CallFailed(failure)
    if failure:
        call.dropped = call.dropped or not call.hangup.is_set()


async def _set_up(
    bsock: BrowserSocket,
    call: BrowserCall,
    ws: trio_websocket.WebSocketConnection,
    caller: str,
    password: str,
    callee: str,
    timeout: float,
) -> None:
    offer = bsock.offer(call)
    message = {"type": "call", "clr": caller, "pwd": password, "cld": callee, "sdp": offer}
    call.timings.sent_call = trio.current_time()
    await ws.send_message(json.dumps(message))
    while call.timings.answer is None:
        message = json.loads(await ws.get_message())
        kind = message.get("type")
        if kind == "progress" and call.dtls is None:
            call.timings.progress = trio.current_time()
            await _start_media(bsock, call, message["sdp"])
        elif kind == "answer":
            call.timings.answer = trio.current_time()
            if call.dtls is None:
                await _start_media(bsock, call, message["sdp"])
        elif kind in ("hangup", "error"):
            raise CallFailed(f"{kind} {message.get('code')} {message.get('reason')}")
    await call.connected.wait()
    if call.profile is None:
        raise CallFailed(f"DTLS failed: {call.dtls.failure_reason if call.dtls else '?'}")


async def _hold(call: BrowserCall, ws: trio_websocket.WebSocketConnection) -> None:
    """Hold the call until `call.hangup`; a call the bridge ends meanwhile is recorded, not raised."""
    async with trio.open_nursery() as nursery:

        async def drain() -> None:
            try:
                while True:
                    message = json.loads(await ws.get_message())
                    if message.get("type") == "hangup":
                        call.end_code = int(message.get("code", 0))
                        break
            except trio_websocket.ConnectionClosed as exc:
                call.end_code = call.end_code or -((exc.reason.code if exc.reason else None) or 1)
            call.dropped = not call.hangup.is_set()
            nursery.cancel_scope.cancel()

        nursery.start_soon(drain)
        await call.hangup.wait()
        try:
            await ws.send_message(json.dumps({"type": "hangup"}))
        except trio_websocket.ConnectionClosed:
            nursery.cancel_scope.cancel()
        with trio.move_on_after(5):
            while call.end_code is None:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def _start_media(bsock: BrowserSocket, call: BrowserCall, sdp: str) -> None:
    call.bridge_port = _media_port(sdp)
    call.bridge_ufrag = _attr(sdp, "ice-ufrag")
    call.bridge_pwd = _attr(sdp, "ice-pwd")
    call.session_id = session_id(sdp)
    alg, _, value = _attr(sdp, "fingerprint").partition(" ")
    setup = _attr(sdp, "setup")
    role = DtlsRole.SERVER if setup == "active" else DtlsRole.CLIENT
    call.dtls = DtlsEndpoint(role, CERT, (alg, value))
    call.local_ip = bsock.address_for(call.number)
    bsock.calls[(call.local_ip, call.bridge_port)] = call
    await bsock.send_check(call)
    if role is DtlsRole.CLIENT:
        await trio.sleep(0.01)  # let the check arrive first: the bridge drops DTLS from unchecked sources
        call.dtls.start(trio.current_time())
        await bsock.flush(call)
