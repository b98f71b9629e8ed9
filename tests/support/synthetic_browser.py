"""A synthetic WebRTC browser for tests and benchmarks: MCCP over WSS, ICE checks, DTLS, SRTP.

It is built from the project's own pure cores (`rtp.stun`, `rtp.dtls`, `rtp.srtp`, `rtp.sdp`,
`mccp.codec`) on Trio, and behaves towards the bridge like Chrome does on the wire:

* its offer looks like Chrome's (audio, PCMU/PCMA/telephone-event 126, `a=setup:actpass`,
  ice-ufrag/pwd, the fingerprint of its own DTLS certificate, BUNDLE, rtcp-mux, one host
  candidate on its loopback socket);
* it speaks MCCP over WSS (trio-websocket over a TLS stream it owns, no certificate check);
* once the bridge's SDP (`progress` or `answer`) arrives it sends STUN Binding checks with
  USE-CANDIDATE, MESSAGE-INTEGRITY and FINGERPRINT to the bridge's candidate, then consent checks
  every `consent_interval` seconds (RFC 7675), which `stop_consent()` stops (a vanished browser);
* it runs the DTLS handshake in the role the answer's `a=setup` gives it, keys SRTP, then sends a
  PCMU tone at 50 packets/s and decrypts what it receives (packets, sequence gaps, the tone heard).

Faults on request: `wrong_fingerprint=True` signals a fingerprint that is not its certificate's,
`do_ice=False` never sends a check, `close_abruptly()` drops the TCP connection without a
WebSocket close, `stop_media()` stops sending RTP while keeping consent alive.

    async with open_synthetic_browser(("127.0.0.1", wss_port)) as page:
        await page.call("100", "secret", "102")
        await page.wait_for("answer")
        await page.wait_media(to_receive=20)
        await page.hangup()
    page.heard().freq  # ~ the far end's tone
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import ssl
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import trio_websocket

import trio
from mccp.codec import decode_bridge_untrusted, encode
from mccp.messages import Answer, BridgeMessage, Call, Hangup, HangupRequest, Progress
from rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, DtlsState
from rtp.errors import SrtpError
from rtp.g711 import decode_alaw, decode_ulaw, encode_alaw, encode_ulaw
from rtp.sdp import Candidate, SessionDescription
from rtp.srtp import SrtpRx, SrtpTx, keys_from_dtls
from rtp.stun import StunClass, StunParseError, binding_request, parse_stun_untrusted

PTIME = 0.02  # 20 ms frames, 160 samples at 8 kHz: 50 packets/s
SAMPLES = 160
WRONG_FINGERPRINT = ":".join(["AB"] * 32)
_CERT: DtlsCertificate | None = None


def browser_certificate() -> DtlsCertificate:
    """One DTLS certificate per test process (generating one costs ~50 ms)."""
    global _CERT
    if _CERT is None:
        _CERT = DtlsCertificate.generate("synthetic-browser")
    return _CERT


def chrome_like_offer(
    *, ufrag: str, pwd: str, fingerprint: str, host: str, port: int, ssrc: int, session_id: int
) -> str:
    """An SDP offer shaped like Chrome's audio-only offer (see recipes/browser/sample_offer)."""
    ip = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        f"o=- {session_id} 2 IN {ip} {host}",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS synthetic",
        f"m=audio {port} UDP/TLS/RTP/SAVPF 0 8 126",
        f"c=IN {ip} {host}",
        "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=candidate:1 1 udp 2122194687 {host} {port} typ host generation 0 network-id 1",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=sendrecv",
        "a=msid:synthetic track0",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:126 telephone-event/8000",
        f"a=ssrc:{ssrc} cname:synthetic",
    ]
    return "\r\n".join(lines) + "\r\n"


@dataclass(frozen=True, slots=True)
class BridgeMedia:
    """What the page needs from the bridge's SDP: its candidate, ICE credentials, DTLS role, codec."""

    candidate: tuple[str, int]
    ufrag: str
    pwd: str
    fingerprint: str
    we_are_dtls_client: bool
    payload_type: int


def parse_bridge_sdp(sdp: str) -> BridgeMedia:
    """Read the bridge's answer (raises `SdpParseError` or `AssertionError` if it is unusable)."""
    desc = SessionDescription.parse_untrusted(sdp)
    media = desc.media[0]
    cands = [Candidate.parse_untrusted(v) for v in media.attribute_values("candidate")]
    udp = [c for c in cands if c.transport.lower() == "udp"]
    assert udp, f"no UDP candidate in the bridge's answer:\n{sdp}"
    ufrag = desc.session_or_media(media, "ice-ufrag")
    pwd = desc.session_or_media(media, "ice-pwd")
    fp = desc.fingerprint_for(media)
    setup = desc.session_or_media(media, "setup")
    assert ufrag, sdp
    assert pwd, sdp
    assert fp is not None, sdp
    assert setup in ("active", "passive"), sdp
    pts = [pt for pt in media.payload_types if pt in (0, 8)]
    assert pts, f"the bridge answered no G.711 codec:\n{sdp}"
    return BridgeMedia(
        candidate=(udp[0].address, udp[0].port),
        ufrag=ufrag,
        pwd=pwd,
        fingerprint=fp.value,
        we_are_dtls_client=setup == "passive",
        payload_type=pts[0],
    )


@dataclass(slots=True)
class Received:
    """Media the page received and decrypted."""

    packets: int = 0
    rtcp_packets: int = 0
    srtp_failures: int = 0
    lost: int = 0  # sequence numbers skipped
    highest_seq: int | None = None
    samples: list[np.ndarray] = field(default_factory=list, repr=False)


class SyntheticBrowser:
    """One page with one call (see the module docstring); build it with `open_synthetic_browser`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        bridge: tuple[str, int],
        sock: trio.socket.SocketType,
        *,
        wrong_fingerprint: bool = False,
        do_ice: bool = True,
        consent_interval: float = 2.5,
        tone_hz: float = 440.0,
        max_samples: int = 8000 * 10,
    ) -> None:
        self.nursery = nursery
        self.bridge = bridge
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        self.do_ice = do_ice
        self.consent_interval = consent_interval
        self.tone_hz = tone_hz
        self.max_samples = max_samples
        self.cert = browser_certificate()
        self.ufrag = secrets.token_hex(2)
        self.pwd = secrets.token_hex(12)
        self.ssrc = secrets.randbits(32)
        fingerprint = WRONG_FINGERPRINT if wrong_fingerprint else self.cert.fingerprint_sha256
        self.offer = chrome_like_offer(
            ufrag=self.ufrag,
            pwd=self.pwd,
            fingerprint=fingerprint,
            host=self.host,
            port=self.port,
            ssrc=self.ssrc,
            session_id=secrets.randbits(62),
        )
        # MCCP
        self.messages: list[BridgeMessage] = []
        self.times: dict[str, float] = {}  # first arrival of each message type, trio clock
        self.wall: dict[str, float] = {}  # the same on the wall clock (to compare with SIPp logs)
        self.hangup_message: Hangup | None = None
        self.ws_closed = trio.Event()
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._tcp: trio.abc.Stream | None = None
        self._changed = trio.Event()
        # media
        self.remote: BridgeMedia | None = None
        self.dtls: DtlsEndpoint | None = None
        self.tx: SrtpTx | None = None
        self.rx: SrtpRx | None = None
        self.stun_replies: list[int] = []
        self.checks_sent = 0
        self.sent_packets = 0
        self.received = Received()
        self.consent = True
        self.sending = True
        self._media_started = False
        self._selected = trio.Event()

    # --- MCCP ---------------------------------------------------------------------------------

    async def call(self, clr: str, pwd: str, cld: str) -> None:
        """Open the WSS connection and send the `call` with our offer."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        host, port = self.bridge
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, context, server_hostname=host)
        await stream.do_handshake()
        self._tcp = stream
        self._ws = await trio_websocket.wrap_client_stream(self.nursery, stream, host, "/mccp")
        self.nursery.start_soon(self._read_mccp)
        self.wall["call"] = time.time()
        self.times["call"] = trio.current_time()
        await self._ws.send_message(encode(Call(clr=clr, pwd=pwd, cld=cld, sdp=self.offer)))

    async def hangup(self) -> None:
        """Send `hangup` (the page's red button)."""
        assert self._ws is not None
        await self._ws.send_message(encode(HangupRequest()))

    async def send_raw(self, text: str) -> None:
        """Send any text frame (for malformed-input tests)."""
        assert self._ws is not None
        await self._ws.send_message(text)

    async def close_abruptly(self) -> None:
        """Drop the TCP connection: no WebSocket close frame, no TLS close_notify."""
        assert self._tcp is not None
        await trio.aclose_forcefully(self._tcp)

    async def close(self) -> None:
        """Close the WebSocket politely (a tab being closed)."""
        if self._ws is not None:
            with trio.move_on_after(2):
                await self._ws.aclose()

    async def _read_mccp(self) -> None:
        assert self._ws is not None
        try:
            while True:
                text = await self._ws.get_message()
                assert isinstance(text, str), "MCCP frames are text"
                message = decode_bridge_untrusted(text)
                self.messages.append(message)
                kind = message.TYPE
                self.times.setdefault(kind, trio.current_time())
                self.wall.setdefault(kind, time.time())
                match message:
                    case Progress(sdp=sdp) | Answer(sdp=sdp):
                        self._start_media(sdp)
                    case Hangup():
                        self.hangup_message = message
                    case _:
                        pass
                self._notify()
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.ws_closed.set()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: object, timeout: float = 10.0) -> None:
        """Wait (bounded) until `predicate()` is true; it is checked after every event."""
        assert callable(predicate)
        with trio.fail_after(timeout):
            while not predicate():
                with trio.move_on_after(0.05):
                    await self._changed.wait()

    async def wait_for(self, kind: str, timeout: float = 10.0) -> BridgeMessage:
        """Wait for the first MCCP message of type `kind` ("answer", "hangup"...)."""
        await self.wait_until(lambda: kind in self.times or self.ws_closed.is_set(), timeout)
        for message in self.messages:
            if kind == message.TYPE:
                return message
        raise AssertionError(f"no {kind!r} before the socket closed; got {self.kinds}")

    async def wait_hangup(self, timeout: float = 10.0) -> Hangup:
        """Wait for the bridge's `hangup`."""
        message = await self.wait_for("hangup", timeout)
        assert isinstance(message, Hangup)
        return message

    @property
    def kinds(self) -> list[str]:
        """The types of the MCCP messages received, in order."""
        return [m.TYPE for m in self.messages]

    # --- media --------------------------------------------------------------------------------

    def _start_media(self, sdp: str) -> None:
        if self._media_started:
            return
        self._media_started = True
        self.remote = parse_bridge_sdp(sdp)
        role = DtlsRole.CLIENT if self.remote.we_are_dtls_client else DtlsRole.SERVER
        self.dtls = DtlsEndpoint(role, self.cert, ("sha-256", self.remote.fingerprint))
        self.nursery.start_soon(self._udp_reader)
        if self.do_ice:
            self.nursery.start_soon(self._ice_checks)
        self.nursery.start_soon(self._sender)

    def stop_consent(self) -> None:
        """Stop sending consent checks (the browser vanished; media may go on)."""
        self.consent = False

    def stop_media(self) -> None:
        """Stop sending RTP (consent checks go on)."""
        self.sending = False

    async def _check(self, use_candidate: bool) -> None:
        assert self.remote is not None
        request = binding_request(
            os.urandom(12),
            username=f"{self.remote.ufrag}:{self.ufrag}",
            key=self.remote.pwd.encode(),
            priority=2122194687,
            ice_controlling=secrets.randbits(63),
            use_candidate=use_candidate,
        )
        self.checks_sent += 1
        await self._sendto(request)

    async def _sendto(self, data: bytes) -> None:
        assert self.remote is not None
        with contextlib.suppress(OSError):  # the bridge's port is gone: ignore, like a browser
            await self.sock.sendto(data, self.remote.candidate)

    async def _ice_checks(self) -> None:
        # Nominate (USE-CANDIDATE), retransmitting like a STUN transaction until answered.
        delay = 0.05
        while not self._selected.is_set():
            await self._check(use_candidate=True)
            with trio.move_on_after(delay):
                await self._selected.wait()
            delay = min(delay * 2, 0.5)
        # RFC 7675: consent checks on the selected pair.
        while True:
            await trio.sleep(self.consent_interval)
            if self.consent:
                await self._check(use_candidate=False)

    async def _flush_dtls(self) -> None:
        assert self.dtls is not None
        for datagram in self.dtls.outgoing():
            await self._sendto(datagram)

    async def _udp_reader(self) -> None:
        assert self.dtls is not None
        dtls = self.dtls
        while True:
            deadline = dtls.next_deadline() if dtls.state is DtlsState.HANDSHAKING else None
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                data, _ = await self.sock.recvfrom(2048)
                self._on_datagram(data)
            dtls.handle_timeout(trio.current_time())
            await self._flush_dtls()
            if dtls.state is DtlsState.CONNECTED and self.tx is None:
                profile = dtls.srtp_profile
                tx, rx = keys_from_dtls(profile, dtls.keying_material(), dtls.is_client)
                self.tx, self.rx = SrtpTx(profile, tx), SrtpRx(profile, rx)
                self._notify()

    def _on_datagram(self, data: bytes) -> None:
        assert self.dtls is not None
        first = data[0] if data else 255
        if first < 4:
            try:
                message = parse_stun_untrusted(data)
            except StunParseError:
                return
            if message.cls in (StunClass.SUCCESS, StunClass.ERROR):
                self.stun_replies.append(message.error_code or 200)
                if message.cls is StunClass.SUCCESS and not self._selected.is_set():
                    self._selected.set()
                    if self.dtls.role is DtlsRole.CLIENT:
                        self.dtls.start(trio.current_time())
                self._notify()
        elif 20 <= first < 64:
            self.dtls.feed_untrusted(data, trio.current_time())
        elif 128 <= first < 192 and self.rx is not None:
            self._on_srtp(data)

    def _on_srtp(self, data: bytes) -> None:
        assert self.rx is not None
        is_rtcp = len(data) > 1 and 192 <= data[1] <= 223
        try:
            plain = self.rx.unprotect_rtcp(data) if is_rtcp else self.rx.unprotect(data)
        except SrtpError:
            self.received.srtp_failures += 1
            return
        if is_rtcp:
            self.received.rtcp_packets += 1
            return
        rec = self.received
        rec.packets += 1
        seq = struct.unpack_from("!H", plain, 2)[0]
        if rec.highest_seq is not None:
            gap = (seq - rec.highest_seq) & 0xFFFF
            if 1 < gap < 0x8000:
                rec.lost += gap - 1
            if gap < 0x8000:
                rec.highest_seq = seq
        else:
            rec.highest_seq = seq
        pt = plain[1] & 0x7F
        cc = plain[0] & 0x0F
        payload = plain[12 + 4 * cc :]
        if pt in (0, 8) and sum(len(s) for s in rec.samples) < self.max_samples:
            decoded = decode_ulaw(payload) if pt == 0 else decode_alaw(payload)
            rec.samples.append(np.asarray(decoded, dtype=np.int16))
        if rec.packets % 10 == 0:
            self._notify()

    def _frame(self, index: int) -> bytes:
        assert self.remote is not None
        t = (np.arange(SAMPLES) + index * SAMPLES) / 8000.0
        pcm = (0.3 * 32767 * np.sin(2 * math.pi * self.tone_hz * t)).astype(int).tolist()
        return encode_ulaw(pcm) if self.remote.payload_type == 0 else encode_alaw(pcm)

    async def _sender(self) -> None:
        """RTP at 50 packets/s, paced on the clock (no drift), once SRTP is keyed."""
        await self.wait_until(lambda: self.tx is not None, timeout=math.inf)
        assert self.tx is not None
        assert self.remote is not None
        seq = secrets.randbelow(1 << 16)
        ts = secrets.randbits(32)
        start = trio.current_time()
        index = 0
        while True:
            if self.sending:
                header = struct.pack(
                    "!BBHII", 0x80, self.remote.payload_type, (seq + index) & 0xFFFF,
                    (ts + index * SAMPLES) & 0xFFFFFFFF, self.ssrc,
                )  # fmt: skip
                await self._sendto(self.tx.protect(header + self._frame(index)))
                self.sent_packets += 1
            index += 1
            await trio.sleep_until(start + index * PTIME)

    async def wait_media(self, *, to_receive: int = 0, to_send: int = 0, timeout: float = 10.0) -> None:
        """Wait until at least `to_receive` packets were received and `to_send` sent."""
        await self.wait_until(
            lambda: self.received.packets >= to_receive and self.sent_packets >= to_send, timeout
        )

    def heard(self) -> tuple[float, float]:
        """(dominant frequency in Hz, RMS level in dBFS) of what was received."""
        if not self.received.samples:
            return 0.0, -math.inf
        x = np.concatenate(self.received.samples).astype(np.float64)
        rms = float(np.sqrt(np.mean(x**2)))
        spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
        spectrum[0] = 0.0
        freq = int(np.argmax(spectrum)) * 8000 / x.size
        return freq, 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


@asynccontextmanager
async def open_synthetic_browser(
    bridge: tuple[str, int], **options: object
) -> AsyncIterator[SyntheticBrowser]:
    """A synthetic browser with its own UDP socket on 127.0.0.1; everything stops on exit."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            page = SyntheticBrowser(nursery, bridge, sock, **options)  # type: ignore[arg-type]
            try:
                yield page
            finally:
                if page._tcp is not None:
                    await trio.aclose_forcefully(page._tcp)
                nursery.cancel_scope.cancel()
