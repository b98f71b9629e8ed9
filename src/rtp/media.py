"""The per-call media plane on Trio: ICE-lite + DTLS-SRTP towards the browser, RTP/RTCP to SIP.

This is the Trio edge of `rtp`: it owns the call's three UDP sockets and runs the pure cores
(`ice_lite`, `dtls`, `demux`, `srtp`, `relay`) on the datagrams it reads. Nothing else here
knows a protocol. The sockets are read by the worker's one `rtp.plane.MediaPlane`, not by tasks
of the call.

API (what `bridge.call` composes into the call nursery)
-----------------------------------------------------

    async with open_media(ports, browser_offer, advertise_hosts=["192.0.2.10"],
                          sip_host="192.0.2.10", certificate=cert, plane=plane) as media:
        page.send(answer=media.browser_answer)      # ICE-lite answer: candidate, fingerprint
        invite(body=media.sip_offer)                # RTP/AVP offer for the INVITE
        async with trio.open_nursery() as call:
            await call.start(media.run_ice_dtls)    # returns once DTLS is connected (keys ready)
            call.start_soon(media.run_relay)
            ...                                      # later, from the SIP dialog task:
            media.set_sip_answer(sdp_of_183_or_200) # codec map + address: media flows both ways
            body = media.answer_sip_offer(reinvite) # hold/resume/new address from the SIP side
            final = media.confirm_browser_answer(browser_offer)  # optional: the SIP codec only
    # leaving the block sends DTLS close_notify and gives the three ports back

Single-port mode: `open_media(..., browser_port=shared)` with the worker's `rtp.browser_port.
SharedBrowserPort` leases no browser port; the answer's candidates carry the shared port, the
session sends on the shared socket and binds its twins beside it, but never registers or closes
it: `run_ice_dtls` attaches the session to it (by our ICE ufrag) and detaches it at the end, a
successful ICE check maps its source to the session, and the shared port's handler hands the
session its datagrams (`serve_shared`, what `_browser_datagram` does for a port of its own).

`MediaSession(...)` can also be built directly from three bound sockets, an `IceLiteAgent`, a
`DtlsEndpoint` and a running `MediaPlane` (`rtp.plane.open_media_plane`), and pointed at the
SIP side with `set_sip_remote(SipRemote(...))`; the loopback tests do that. Call `close()` when done.

Tasks and sockets (STYLE.md 2.3): each socket has exactly one reader, the worker's media plane
(`rtp.plane`: one epoll, one task, a synchronous handler per socket that drains it with
non-blocking `recvfrom_into`, the perf recipe). The call keeps its two tasks, which only hold the
registrations and the timers. While `run_ice_dtls` runs, the plane serves the browser port: each
datagram is classified (RFC 7983), STUN answered inline, DTLS fed and its flight sent, and
SRTP/SRTCP relayed to the SIP leg inline (unprotect, rewrite, send); the task itself sleeps until
its earliest deadline (handshake, DTLS retransmission, consent, no media) or until a STUN/DTLS
datagram wakes it (never SRTP). While `run_relay` runs, the plane serves the SIP leg's RTP and
RTCP sockets and sends SRTP/SRTCP to the browser's nominated address. Sends are non-blocking
`sendto`; a full socket buffer drops (counted). Once media flows both ways, each leg's stream comes
on a connected twin socket (`_twin`), and both twins are served by the C relay `rtp._steady` when it
was built: the same results as the Python path, which it hands everything unusual to
(`_steady_start`).

Ending: `run_ice_dtls` raises `MediaEnded` when ICE+DTLS do not complete within
`handshake_timeout`, when DTLS fails (including a fingerprint mismatch), when the peer closes
DTLS, when ICE consent expires (RFC 7675: 30 s without a valid check), or when the browser sends
no media for `media_timeout` seconds once connected. Bad packets never end a task: they are
dropped and counted in `stats()`.

Time: `now` for the pure cores is `trio.current_time()`. The DTLS retransmission timer runs on
that clock too (see `rtp.dtls`: OpenSSL's own timer reads the wall clock, so it is not used).
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import trio
from rtp.browser_port import SharedBrowserPort
from rtp.demux import DemuxCounters, PacketKind, classify
from rtp.dtls import DtlsCertificate, DtlsCounters, DtlsEndpoint, DtlsRole, DtlsState
from rtp.errors import LocalProtocolError
from rtp.ice_lite import CONSENT_TIMEOUT, IceCounters, IceLiteAgent
from rtp.latch import LEARNING_PACKETS, SourceLatch, Verdict
from rtp.plane import ErrorHandler, Handler, MediaPlane
from rtp.relay import CodecMap, LegCounters, Relay
from rtp.sdp_answer import (
    BrowserNegotiation,
    SipMedia,
    answer_browser_offer,
    answer_sip_reoffer,
    codec_map,
    offer_for_sip,
    parse_sip_answer,
)
from rtp.srtp import keys_from_dtls, srtp_pair
from rtp.stun import Address

try:  # the steady stream in C (src/rtp/_steady.c), built at install where a compiler is
    from rtp import _steady
except ImportError:  # pragma: no cover - without it, the Python relay does everything
    _steady = None  # type: ignore[assignment]

__all__ = [
    "STEADY_IN_C",
    "EdgeCounters",
    "MediaEnded",
    "MediaSession",
    "MediaStats",
    "Negotiation",
    "SipRemote",
    "open_media",
]

log = logging.getLogger(__name__)

RCVBUF = 1 << 20  # SO_RCVBUF: the default 208 KiB holds only ~256 packets (perf recipe)
HANDSHAKE_TIMEOUT = 20.0
MEDIA_TIMEOUT = 30.0
EMPTY_CODEC_MAP = CodecMap(to_sip={}, to_browser={})
Leg = Literal["browser", "sip"]  # which leg a connected twin serves
STEADY_IN_C = _steady is not None  # whether rtp._steady was built (see MediaSession._steady_start)


class MediaEnded(Exception):
    """The media plane ended the call: `reason` for logs and the MCCP hangup, `code` SIP-like
    (408 for a timeout or lost consent, 488 for a DTLS failure, 487 when the peer closed)."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(f"{code} {reason}")
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class SipRemote:
    """Where the SIP side's media goes, and which payload types map to which (from its SDP)."""

    rtp: Address
    rtcp: Address
    codec_map: CodecMap
    may_send: bool = True  # False while the SIP side holds the call (sendonly/inactive/0.0.0.0)


@dataclass(slots=True)
class EdgeCounters:
    """Drops decided by the edge (it knows the source addresses and the sockets)."""

    not_validated: int = 0  # DTLS/SRTP from an address that passed no ICE check
    before_keys: int = 0  # SRTP before the DTLS handshake completed
    no_browser_address: int = 0  # SIP media before the browser's address is known
    unknown_source: int = 0  # SIP media refused by the source latch (the two below included)
    latch_invalid: int = 0  # ...of which not valid RTP/RTCP or a PT not negotiated, before a latch
    latch_learning: int = 0  # ...of which held back during a foreign source's learning run
    no_sip_address: int = 0  # media (either way) before the SIP answer
    on_hold: int = 0  # browser media not sent while the SIP side holds the call
    send_failed: int = 0  # sendto raised (full buffer, ICMP unreachable)
    latched: int = 0  # symmetric RTP: latched onto a source other than the SDP's (rtp.latch)
    twins: int = 0  # connected twin sockets opened (see MediaSession._twin)
    twin_failed: int = 0  # ...that could not be (the port was not bound with SO_REUSEPORT)
    punted: int = 0  # twins' datagrams the C relay left to Python (RTCP, STUN, a new source...)


@dataclass(frozen=True, slots=True)
class MediaStats:
    """A snapshot of every counter of the call's media plane."""

    demux: DemuxCounters
    ice: IceCounters
    dtls: DtlsCounters
    to_sip: LegCounters
    to_browser: LegCounters
    edge: EdgeCounters
    dtls_state: DtlsState
    selected: Address | None


class _Socket(Protocol):
    def fileno(self) -> int: ...


def _raw_socket(sock: _Socket) -> socket.socket:
    """A non-blocking stdlib socket on a duplicate of `sock`'s descriptor (the perf recipe's
    drain loop needs synchronous `recvfrom_into`); the caller keeps ownership of `sock`."""
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    raw.setblocking(False)
    with suppress(OSError):
        # Only ever raise the buffer (the port allocator may already have asked for more).
        if raw.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < RCVBUF:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    return raw


def _leg_snapshot(leg: LegCounters) -> LegCounters:
    # copy.deepcopy took ~70 us per direction (the reception statistics' objects); this ~2 us.
    return LegCounters(
        packets=leg.packets,
        octets=leg.octets,
        rtcp_packets=leg.rtcp_packets,
        last_packet_time=leg.last_packet_time,
        dropped=dict(leg.dropped),
        reception=leg.reception,
    )


def _addr(raw: Any) -> Address:
    # IPv6 sources come as (host, port, flowinfo, scope_id); the agents key on (host, port).
    return (str(raw[0]), int(raw[1]))


@dataclass(slots=True)
class Negotiation:
    """The SDP state of both legs, kept so later answers and re-offers stay consistent."""

    browser: BrowserNegotiation
    fingerprint_sha256: str
    candidates: list[Address]
    session_id: int
    sip_host: str
    sip_rtp_port: int
    browser_version: int = 1
    sip_version: int = 1
    sip: SipMedia | None = None


class PortSource(Protocol):
    """What `open_media` needs from the port allocator (`rtp.ports.PortAllocator`)."""

    def udp(self) -> AbstractAsyncContextManager[trio.socket.SocketType]: ...

    def udp_pair(
        self,
    ) -> AbstractAsyncContextManager[tuple[trio.socket.SocketType, trio.socket.SocketType]]: ...


class MediaSession:
    """One call's media plane (see the module docstring for the task and socket rules).

    Built by `open_media`, or directly from bound sockets: `browser_sock` (ICE/DTLS/SRTP, rtcp-mux),
    `sip_rtp_sock` and `sip_rtcp_sock` (the SIP leg's pair). `ice` holds the ICE credentials,
    `dtls` the certificate, role and the browser's fingerprint.
    """

    # Slots: a call's attributes sit in the object itself (smaller; fewer cache lines per packet).
    __slots__ = (
        "_browser",
        "_browser_failure",
        "_browser_port",
        "_browser_twin",
        "_browser_twin_peer",
        "_buf",
        "_closed",
        "_dtls_peer",
        "_keyed",
        "_last_browser_media",
        "_last_validated",
        "_latch",
        "_learning_packets",
        "_media_source",
        "_pkt",
        "_plane",
        "_relay_wakeup",
        "_sip",
        "_sip_failure",
        "_sip_rtcp",
        "_sip_rtp",
        "_sip_sdp",
        "_sip_twin",
        "_sip_twin_peer",
        "_steady",
        "_view",
        "_wakeup",
        "browser_answer",
        "demux",
        "dtls",
        "edge",
        "handshake_timeout",
        "ice",
        "log",
        "media_timeout",
        "negotiation",
        "relay",
        "sip_offer",
    )

    def __init__(
        self,
        *,
        browser_sock: _Socket | None = None,
        browser_port: SharedBrowserPort | None = None,
        sip_rtp_sock: _Socket,
        sip_rtcp_sock: _Socket,
        ice: IceLiteAgent,
        dtls: DtlsEndpoint,
        plane: MediaPlane,
        relay: Relay | None = None,
        browser_answer: str = "",
        sip_offer: str = "",
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        media_timeout: float | None = MEDIA_TIMEOUT,
        negotiation: Negotiation | None = None,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
        learning_packets: int = LEARNING_PACKETS,
    ) -> None:
        self.ice = ice
        self.dtls = dtls
        self.relay = relay or Relay(
            EMPTY_CODEC_MAP,
            ssrc=int.from_bytes(secrets.token_bytes(4), "big"),
            initial_sequence=secrets.randbelow(1 << 16),
            initial_timestamp=int.from_bytes(secrets.token_bytes(4), "big"),
        )
        self.browser_answer = browser_answer
        self.sip_offer = sip_offer
        self.handshake_timeout = handshake_timeout
        self.media_timeout = media_timeout
        self.demux = DemuxCounters()
        self.edge = EdgeCounters()
        self.log = logger or log
        self.negotiation = negotiation
        self._plane = plane
        # The browser leg's socket: the call's own (a duplicate, ours to register and close), or
        # the worker's shared port (rtp.browser_port: used to send and to bind twins beside, never
        # registered, unregistered or closed by the call).
        self._browser_port = browser_port
        if browser_port is not None:
            if browser_sock is not None:
                raise ValueError("a browser socket or a shared browser port, not both")
            self._browser = browser_port.socket
        elif browser_sock is not None:
            self._browser = _raw_socket(browser_sock)
        else:
            raise ValueError("a browser socket or a shared browser port is needed")
        self._sip_rtp = _raw_socket(sip_rtp_sock)
        self._sip_rtcp = _raw_socket(sip_rtcp_sock)
        # The plane's receive buffer, shared by every call of the worker (rtp.plane): handlers
        # run one at a time and each datagram is done with (sent, copied or dropped) before the
        # next is read. SRTP runs in place on it: a datagram is sent from where it came in.
        self._pkt = plane.buffer
        self._buf = self._pkt.data
        self._view = self._pkt.view
        # Connected twins (see `_twin`): the browser's nominated address, the SIP leg's latched RTP source.
        self._browser_twin: socket.socket | None = None
        self._browser_twin_peer: Address | None = None
        self._sip_twin: socket.socket | None = None
        self._sip_twin_peer: Address | None = None
        self._steady: _steady.SteadyRelay | None = None  # both twins' C relay (see `_steady_start`)
        self._sip: SipRemote | None = None  # where SIP media goes (the latched sources)
        self._sip_sdp: SipRemote | None = None  # what the SIP answer's SDP said
        self._latch: SourceLatch | None = None
        self._learning_packets = learning_packets
        self._dtls_peer: Address | None = None
        self._last_validated: Address | None = None
        self._media_source: Address | None = None  # the last validated source of browser media
        self._last_browser_media: float | None = None
        self._keyed = False  # DTLS connected and SRTP keyed
        self._closed = False
        self._wakeup = trio.Event()  # run_ice_dtls sleeps on it (STUN, DTLS, close, failure)
        self._relay_wakeup = trio.Event()  # run_relay sleeps on it (close, failure)
        self._browser_failure: BaseException | None = None
        self._sip_failure: BaseException | None = None

    # --- control (called from other tasks of the call) -------------------------------------

    def set_sip_remote(self, remote: SipRemote) -> None:
        """Point the SIP leg at `remote` and install its codec map (early media starts now).

        A new address starts a new source latch (`rtp.latch`); the same address keeps the
        latched sources and only changes the payload types the latch admits.
        """
        self._steady_collect()
        latch, sdp = self._latch, self._sip_sdp
        pts = remote.codec_map.to_browser.keys()
        if latch is None or sdp is None or remote.rtp != sdp.rtp or remote.rtcp != sdp.rtcp:
            self._latch = SourceLatch(remote.rtp, remote.rtcp, pts, learning_packets=self._learning_packets)
            self._sip = remote
        else:
            latch.set_payload_types(pts)
            self._sip = SipRemote(
                latch.rtp_source or remote.rtp,
                latch.rtcp_source or remote.rtcp,
                remote.codec_map,
                remote.may_send,
            )
        self._sip_sdp = remote
        self.relay.set_codec_map(remote.codec_map)
        self._steady_arm()

    def set_sip_answer(self, sdp: str) -> None:
        """Apply the SIP side's answer to `sip_offer` (from a 183 or the 200): its address and
        codec, so SIP -> browser media (early media included) flows from now on.

        Raises `SdpParseError` or `NegotiationError` (status_hint 488) for an unusable answer.
        """
        neg = self._negotiated()
        sip = parse_sip_answer(sdp, self.sip_offer)
        self._apply_sip_media(neg, sip)

    def answer_sip_offer(self, sdp: str) -> str:
        """Answer an offer from the SIP side (a re-INVITE: hold, resume, new address or codec)
        and apply it; returns our SDP answer for the 200."""
        neg = self._negotiated()
        neg.sip_version += 1
        current = neg.sip.codec.name if neg.sip is not None else None
        answer, sip = answer_sip_reoffer(
            sdp,
            host=neg.sip_host,
            rtp_port=neg.sip_rtp_port,
            session_id=neg.session_id,
            session_version=neg.sip_version,
            prefer=current,
        )
        self._apply_sip_media(neg, sip)
        return answer

    def confirm_browser_answer(self, browser_offer: str) -> str:
        """A final answer to the page's `browser_offer` (the one `open_media` answered) once the
        SIP side has chosen its codec: the same ICE and DTLS parameters, listing the SIP side's
        codec alone if the browser offered it (so no transcoding is needed), else the provisional
        codecs again. The offer is not kept for the whole call (~5 KB a call): the caller has it."""
        neg = self._negotiated()
        neg.browser_version += 1
        codecs = [c.name for c in neg.browser.codecs]
        if neg.sip is not None and neg.sip.codec.name in codecs:
            codecs = [neg.sip.codec.name]
        answer, browser = answer_browser_offer(
            browser_offer,
            ice_ufrag=self.ice.local_ufrag,
            ice_pwd=self.ice.local_pwd,
            fingerprint_sha256=neg.fingerprint_sha256,
            candidates=neg.candidates,
            session_id=neg.session_id,
            session_version=neg.browser_version,
            codecs=codecs,
            ssrc=self.relay.ssrc,
        )
        neg.browser = browser
        if neg.sip is not None:
            self._apply_sip_media(neg, neg.sip)
        self.browser_answer = answer
        return answer

    def _negotiated(self) -> Negotiation:
        if self.negotiation is None:
            raise LocalProtocolError("this MediaSession was built without SDP negotiation (open_media)")
        return self.negotiation

    def _apply_sip_media(self, neg: Negotiation, sip: SipMedia) -> None:
        neg.sip = sip
        self.set_sip_remote(
            SipRemote(
                rtp=(sip.address, sip.rtp_port),
                rtcp=(sip.rtcp_address, sip.rtcp_port),
                codec_map=codec_map(neg.browser, sip),
                may_send=sip.we_may_send,
            )
        )

    @property
    def keys_ready(self) -> bool:
        """True once DTLS has connected and SRTP is keyed."""
        return self._keyed

    @property
    def browser_address(self) -> Address | None:
        """Where media to the browser goes: the nominated pair, else the last validated one."""
        return self.ice.selected or self._last_validated

    def stats(self) -> MediaStats:
        """A copy of every counter of the call's media plane (for metrics and the end-of-call log).

        Cheap (metrics take one of every live call at each scrape): the counters are copied, the
        reception statistics (`LegCounters.reception`) are the live object, read where used."""
        self._steady_collect()
        self._steady_arm()
        return MediaStats(
            demux=copy.copy(self.demux),
            ice=copy.copy(self.ice.counters),
            dtls=copy.copy(self.dtls.counters),
            to_sip=_leg_snapshot(self.relay.to_sip),
            to_browser=_leg_snapshot(self.relay.to_browser),
            edge=copy.copy(self.edge),
            dtls_state=self.dtls.state,
            selected=self.ice.selected,
        )

    def close(self) -> None:
        """Send DTLS close_notify (best effort), stop serving and close our socket descriptors.
        Idempotent; call it after the media tasks have ended (`open_media` does). Tasks still
        running are woken: `run_ice_dtls` raises MediaEnded (487), `run_relay` returns."""
        if self._closed:
            return
        self._closed = True
        self._drop_twin("browser")
        self._drop_twin("sip")
        shared = self._browser_port
        own = (
            (self._sip_rtp, self._sip_rtcp)
            if shared is not None
            else (self._browser, self._sip_rtp, self._sip_rtcp)
        )
        if shared is not None:  # no entry of this call is left in the shared port's table
            shared.detach(self)
            shared.release(self.ice.local_ufrag)
        for raw in own:
            self._plane.unregister(raw)  # before close: the epoll keys on the open file
        self.dtls.close()
        dest = self._dtls_peer or self.browser_address
        for datagram in self.dtls.outgoing():
            if dest is not None:
                self._send(self._browser, datagram, dest)
        for raw in own:
            raw.close()
        self._wakeup.set()
        self._relay_wakeup.set()

    # --- helpers ----------------------------------------------------------------------------

    def _send(self, raw: socket.socket, data: bytes | bytearray, dest: Address) -> None:
        try:
            raw.sendto(data, dest)
        except OSError:  # BlockingIOError (full buffer), ECONNREFUSED from an ICMP error...
            self.edge.send_failed += 1

    def _flush_dtls(self) -> None:
        dest = self._dtls_peer or self.browser_address
        for datagram in self.dtls.outgoing():
            if dest is None:
                break
            self._send(self._browser, datagram, dest)

    def _deadline(self, started_at: float) -> float:
        deadlines = [trio.current_time() + 3600.0]
        if not self._keyed:
            deadlines.append(started_at + self.handshake_timeout)
        dtls_deadline = self.dtls.next_deadline()
        if dtls_deadline is not None:
            deadlines.append(dtls_deadline)
        release_at = self.dtls.release_at  # free OpenSSL's objects on time (rtp.dtls)
        if release_at is not None:
            deadlines.append(release_at)
        consent = self.ice.consent_expires_at
        if consent is not None:
            deadlines.append(consent)
        if self._keyed and self.media_timeout is not None and self._last_browser_media is not None:
            deadlines.append(self._last_browser_media + self.media_timeout)
        return min(deadlines)

    def _check_end(self, now: float, started_at: float) -> None:
        match self.dtls.state:
            case DtlsState.FAILED:
                raise MediaEnded(self.dtls.failure_reason or "DTLS failed", 488)
            case DtlsState.CLOSED:
                raise MediaEnded(self.dtls.failure_reason or "DTLS closed", 487)
            case DtlsState.HANDSHAKING | DtlsState.CONNECTED:
                pass
        if not self._keyed and now >= started_at + self.handshake_timeout:
            what = "ICE" if self.browser_address is None else "DTLS"
            raise MediaEnded(f"{what} did not complete within {self.handshake_timeout:g} s", 408)
        if self.ice.consent_expired(now):
            raise MediaEnded("ICE consent expired (RFC 7675)", 408)
        if (
            self._keyed
            and self.media_timeout is not None
            and self._last_browser_media is not None
            and now >= self._last_browser_media + self.media_timeout
        ):
            raise MediaEnded(f"no media from the browser for {self.media_timeout:g} s", 408)

    def _start_srtp(self, now: float) -> None:
        profile = self.dtls.srtp_profile
        tx, rx = keys_from_dtls(profile, self.dtls.keying_material(), self.dtls.is_client)
        self.relay.start_srtp(*srtp_pair(profile, tx, rx))
        self._last_browser_media = now
        self._keyed = True
        self.log.info("DTLS connected (%s), SRTP keyed", profile.name)

    def _register(self, raw: socket.socket, handler: Handler, on_error: ErrorHandler) -> bool:
        """Serve `raw` from the plane; False if the plane or this session is already closed."""
        if self._closed:
            return False
        try:
            self._plane.register(raw, handler, on_error)
        except trio.ClosedResourceError:
            return False
        return True

    def _unregister(self, raw: socket.socket) -> None:
        if not self._closed:  # close() unregistered everything, and the descriptor may be reused
            self._plane.unregister(raw)

    # --- the browser port -------------------------------------------------------------------

    async def run_ice_dtls(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the browser port for the whole call (STUN, DTLS, SRTP, SRTCP); the leg's timers.

        The plane runs `_browser_datagram` for every datagram; this task only sleeps until
        the earliest deadline (handshake timeout, DTLS retransmission, ICE consent per RFC 7675,
        no browser media) or until the handler wakes it (a STUN or DTLS datagram, never SRTP).
        Calls `task_status.started()` once DTLS is connected and SRTP is keyed; raises
        `MediaEnded` when the media plane must end the call. Never returns otherwise.
        """
        started_at = trio.current_time()
        if not self._serve_browser():
            if self._closed:
                raise MediaEnded("media session closed", 487)
            raise MediaEnded("media plane closed", 503)
        reported = False
        try:
            while True:
                if self._browser_failure is not None:
                    raise self._browser_failure  # a bug in the handler: this call ends (500)
                if self._closed:
                    raise MediaEnded("media session closed", 487)
                now = trio.current_time()
                self._steady_collect()  # the C relay's counters and times (the media timeout)
                self._steady_arm()
                self.dtls.handle_timeout(now)
                self._flush_dtls()
                if not reported and self._keyed:
                    task_status.started()
                    reported = True
                self._check_end(now, started_at)
                # A deadline that moved later (consent refreshed, media arrived) costs one
                # early wake-up and a recompute; SRTP never wakes this task.
                wakeup = self._wakeup = trio.Event()
                with trio.move_on_at(self._deadline(started_at)):
                    await wakeup.wait()
        finally:
            if self._browser_port is not None:
                self._browser_port.detach(self)
            else:
                self._unregister(self._browser)

    def _serve_browser(self) -> bool:
        """Have the plane serve the browser leg: the call's own port, or its entry in the
        worker's shared port (rtp.browser_port). False if the plane, port or session is closed."""
        shared = self._browser_port
        if shared is None:
            return self._register(self._browser, self._browser_datagram, self._on_browser_error)
        if self._closed:
            return False
        try:
            shared.attach(self.ice.local_ufrag, self)
        except trio.ClosedResourceError:
            return False
        return True

    def _on_browser_error(self, exc: BaseException) -> None:
        self._browser_failure = exc
        self._wakeup.set()

    def serve_shared(self, n: int, src: Address, now: float) -> None:
        """A datagram for this call from the shared browser port (rtp.browser_port), of `n`
        bytes in the plane's buffer: handled as `_browser_datagram` handles the call's own, or,
        from the nominated address of a port without connected twins, as its twin's would be."""
        steady = self._steady
        if steady is not None and src == self._browser_twin_peer and self._browser_twin is None:
            steady.browser_in(n, now)  # relayed in C, or punted to `_browser_steady_punt`
            return
        self._browser_process(n, src, now)
        self._steady_arm()

    def shared_failed(self, exc: BaseException) -> None:
        """`serve_shared` raised (a bug): the shared port detached this call, which ends (500)."""
        self._on_browser_error(exc)

    def _browser_datagram(self, now: float) -> bool:
        """One datagram from the browser port, relayed or answered inline; False if there was none."""
        try:
            n, src = self._browser.recvfrom_into(self._buf)
        except OSError:  # BlockingIOError, or e.g. ECONNREFUSED queued by an ICMP error
            return False
        self._browser_process(n, src if len(src) == 2 else _addr(src), now)
        self._steady_arm()  # if the datagram took the relay's state back from C (else a no-op)
        return True

    def _browser_twin_datagram(self, now: float) -> bool:
        """One datagram from the browser's twin (connected to its nominated address)."""
        twin = self._browser_twin
        if twin is None:
            return False
        try:
            n = twin.recv_into(self._buf)
        except OSError:
            return False
        peer = self._browser_twin_peer
        if peer is not None:
            self._browser_process(n, peer, now)
        return True

    def _browser_process(self, n: int, src: Address, now: float) -> None:
        buf = self._buf
        first = buf[0] if n else 0xFF
        if not 127 < first < 192 or n < 2:
            if self._on_browser_signalling(self._view[:n], src, now):
                self._flush_dtls()  # DTLS flights and our ClientHello go out in this pass
                self._wakeup.set()  # the timer task recomputes its deadline, sees state changes
            return
        # RTP or RTCP (RFC 7983 §7), told apart by the packet type (RFC 5761 §4).
        rtcp = 64 <= buf[1] & 0x7F <= 95
        if rtcp:
            self.demux.rtcp += 1
        else:
            self.demux.rtp += 1
        if src != self._media_source:
            if not self.ice.is_validated(src):
                self.edge.not_validated += 1
                return
            selected = self.browser_address
            if src == selected and src != self._browser_twin_peer:
                # One tuple object for the source, the destination and the twin's peer: the
                # per-packet comparisons then only see identical items (no string compared).
                src = selected
                self._twin("browser", src)
            self._media_source = src  # validated addresses stay so (rtp.ice_lite)
        if not self._keyed:
            self.edge.before_keys += 1
            return
        self._steady_collect()  # relayed in Python: the relay's state back from C first
        self._last_browser_media = now
        sip = self._sip
        if sip is None:  # still ringing: no codec map, no address (not a relay drop)
            self.edge.no_sip_address += 1
            return
        out: bytes | bytearray | memoryview | None
        if rtcp:
            out = self.relay.browser_rtcp(self._view[:n], now)
            dest, sock = sip.rtcp, self._sip_rtcp
        else:
            m = self.relay.browser_rtp_in(self._pkt, n, now)
            out = self._view[:m] if m else None
            dest, sock = sip.rtp, self._sip_rtp
        if out is None:
            return
        if not sip.may_send:  # still unprotected above, so SRTP's rollover stays in step
            self.edge.on_hold += 1
            return
        try:
            if dest == self._sip_twin_peer and self._sip_twin is not None:
                self._sip_twin.send(out)
            else:
                sock.sendto(out, dest)
        except OSError:  # BlockingIOError (full buffer), ECONNREFUSED from an ICMP error...
            self.edge.send_failed += 1

    def _on_browser_signalling(self, data: memoryview, src: Address, now: float) -> bool:
        """A datagram that is not RTP/RTCP: STUN, DTLS or unknown. True if the timer task must look
        (DTLS, or STUN before the keys); a consent check on a keyed call only moves the consent
        deadline later, which the task finds when it wakes (no wake-up per check)."""
        kind = classify(data)
        self.demux.count(kind)
        match kind:
            case PacketKind.STUN:
                selected, before = self.ice.selected, self.browser_address
                checks_ok = self.ice.counters.checks_ok
                reply = self.ice.handle_stun_untrusted(bytes(data), src, now)
                if reply is not None:
                    self._send(self._browser, reply, src)
                if self.ice.selected != selected:
                    self.log.info("ICE: the browser nominated %s:%d", *src)
                if self._browser_port is not None and self.ice.counters.checks_ok != checks_ok:
                    self._browser_port.validated(src, self)  # DTLS and media from src: this call's
                if self.ice.is_validated(src):
                    self._last_validated = src
                    if self.browser_address != before:
                        self._steady_collect()  # SIP media goes elsewhere: no longer C's steady state
                    if self.dtls.role is DtlsRole.CLIENT and self._dtls_peer is None:
                        self._dtls_peer = src
                        self.dtls.start(now)
                return not self._keyed
            case PacketKind.DTLS:
                if not self.ice.is_validated(src):
                    self.edge.not_validated += 1
                    return False
                if self.dtls.role is DtlsRole.SERVER:
                    self._dtls_peer = src
                self.dtls.feed_untrusted(bytes(data), now)
                if self.dtls.state is DtlsState.CONNECTED and not self._keyed:
                    # Key SRTP at once: the peer's first SRTP may follow in this same batch.
                    self._start_srtp(now)
                return True
            case PacketKind.RTP | PacketKind.RTCP | PacketKind.UNKNOWN:
                return False  # RTP/RTCP too short to relay (the caller handles the others)

    # --- the SIP leg ------------------------------------------------------------------------

    async def run_relay(self) -> None:
        """Serve the SIP leg's RTP and RTCP sockets for the whole call; SRTP/SRTCP to the browser.

        The plane runs `_sip_rtp_datagram` / `_sip_rtcp_datagram` for every datagram; this
        task only holds the registration for its lifetime (cancellation ends it; so does
        `close()`, and then it returns). Symmetric RTP (RFC 4961) with strict learning
        (`rtp.latch`): after each new SIP answer the leg latches onto a validated source (the
        SDP's IP at once, another IP after a learning run) and media to SIP goes there; other
        sources are dropped and counted. Never raises on input.
        """
        if not self._register(self._sip_rtp, self._sip_rtp_datagram, self._on_sip_error):
            return
        try:
            if not self._register(self._sip_rtcp, self._sip_rtcp_datagram, self._on_sip_error):
                return
            try:
                await self._relay_wakeup.wait()
                if self._sip_failure is not None:
                    raise self._sip_failure  # a bug in the handler: this call ends (500)
            finally:
                self._unregister(self._sip_rtcp)
        finally:
            self._unregister(self._sip_rtp)

    def _on_sip_error(self, exc: BaseException) -> None:
        self._sip_failure = exc
        self._relay_wakeup.set()

    def _sip_rtp_datagram(self, now: float) -> bool:
        """One datagram from the SIP RTP socket, relayed inline; False if there was none."""
        try:
            n, src = self._sip_rtp.recvfrom_into(self._buf)
        except OSError:
            return False
        self._sip_rtp_process(n, src, now)
        self._steady_arm()  # if the datagram took the relay's state back from C (else a no-op)
        return True

    def _sip_twin_datagram(self, now: float) -> bool:
        """One datagram from the SIP leg's twin (connected to the latched RTP source)."""
        twin = self._sip_twin
        if twin is None:
            return False
        try:
            n = twin.recv_into(self._buf)
        except OSError:
            return False
        peer = self._sip_twin_peer
        if peer is not None:
            self._sip_rtp_process(n, peer, now)
        return True

    def _sip_rtp_process(self, n: int, src: Any, now: float) -> None:
        sip, latch = self._sip, self._latch
        # The hot path: from the latched source (IPv4 sources already come as (host, port)).
        if sip is None or latch is None or src != sip.rtp or src != latch.rtp_source:
            if len(src) != 2:
                src = _addr(src)
            if not self._accept_sip_source(self._view[:n], src, False):
                return
            sip = self._sip
            if sip is not None and src == sip.rtp and src != self._sip_twin_peer and latch is not None:
                # As for the browser: one tuple object for the latch, the SIP remote and the twin.
                src = latch.rtp_source or src
                if sip.rtp is not src:
                    self._sip = SipRemote(src, sip.rtcp, sip.codec_map, sip.may_send)
                self._twin("sip", src)
        dest = self.ice.selected or self._last_validated
        if dest is None:
            self.edge.no_browser_address += 1
            return
        self._steady_collect()  # relayed in Python: the relay's state back from C first
        m = self.relay.sip_rtp_in(self._pkt, n, now)
        if m:
            try:
                if dest == self._browser_twin_peer and self._browser_twin is not None:
                    self._browser_twin.send(self._view[:m])
                else:
                    self._browser.sendto(self._view[:m], dest)
            except OSError:
                self.edge.send_failed += 1

    # --- connected twins ----------------------------------------------------------------------

    # A socket bound to the same port as the browser's (or the SIP leg's RTP) socket and
    # connected to the one address media really comes from: the nominated browser address, the
    # latched SIP source. The kernel gives a connected socket the datagrams of its peer (the
    # exact 4-tuple outranks the unconnected socket; a reuseport group never hashes to a
    # connected member), so the steady media stream is read with `recv_into` and sent with
    # `send`: no source address made into a Python tuple, no destination parsed (about 1.4 us
    # less per relayed datagram, bench/relay_edge.py). Everything else (other candidates,
    # sprayers, a new source) still reaches the unconnected socket and the checks above; the
    # twin's datagrams go through the same checks too, with the peer as their source. Needs
    # the port bound with SO_REUSEPORT (rtp.ports); without it the call goes on without twins.

    def _twin(self, leg: Leg, peer: Address) -> None:
        """Open (or move) the `leg`'s twin, connected to `peer`, served by the plane."""
        self._drop_twin(leg)
        if self._closed:
            return
        if leg == "browser" and self._browser_port is not None and not self._browser_port.twins:
            # A shared port without connected twins (a kernel with no 4-tuple hash for them,
            # rtp.browser_port): the port routes the peer's datagrams here by address, and the
            # C relay sends to the peer from the port. Only the peer is kept: a twin with no socket.
            self._browser_twin_peer = peer
            self._steady_start()
            return
        raw = self._browser if leg == "browser" else self._sip_rtp
        try:
            twin = socket.socket(raw.family, socket.SOCK_DGRAM)
        except OSError:
            self.edge.twin_failed += 1
            return
        try:
            twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            twin.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            twin.bind(raw.getsockname())
            twin.connect(peer)
            twin.setblocking(False)
        except OSError:
            twin.close()
            self.edge.twin_failed += 1
            return
        if leg == "browser" and self._browser_port is not None:
            self._drop_strays(twin, peer)
        on_error = self._on_browser_error if leg == "browser" else self._on_sip_error
        if leg == "browser":
            self._browser_twin, self._browser_twin_peer = twin, peer
            handler = self._browser_twin_datagram
        else:
            self._sip_twin, self._sip_twin_peer = twin, peer
            handler = self._sip_twin_datagram
        if not self._register(twin, handler, on_error):
            self._drop_twin(leg)
            return
        self.edge.twins += 1
        self._steady_start()

    def _drop_strays(self, twin: socket.socket, peer: Address) -> None:
        """Drop what the kernel queued on a new twin of the shared browser port from others.

        Between its bind and its connect the twin is an unconnected member of the port's
        reuseport group, and the kernel may hash another call's datagram to it (on a shared port
        at thousands of packets/s, that window is not negligible); read later, it would pass for
        the peer's. The head of the queue is peeked at; datagrams from others are dropped
        (counted in the shared port's `twin_strays`) until the peer's first or an empty queue.
        """
        port = self._browser_port
        while port is not None:
            try:
                _, src = twin.recvfrom(1, socket.MSG_PEEK)
                if _addr(src) == peer:
                    return
                twin.recv(1)
            except OSError:  # empty (BlockingIOError), or an ICMP error queued
                return
            port.counters.twin_strays += 1

    def _drop_twin(self, leg: Leg) -> None:
        self._steady_stop()
        if leg == "browser":
            twin, self._browser_twin, self._browser_twin_peer = self._browser_twin, None, None
        else:
            twin, self._sip_twin, self._sip_twin_peer = self._sip_twin, None, None
        if twin is not None:
            self._plane.unregister(twin)  # before close: the epoll keys on the open file
            twin.close()

    # --- the steady stream in C ------------------------------------------------------------------

    # With both twins up, a `rtp._steady.SteadyRelay` serves them: it relays the steady stream's
    # datagrams itself (the same results as `_browser_process` / `_sip_rtp_process` with
    # `rtp.relay`; tests/unit/rtp/test_rtp_steady.py compares them) and punts everything else to
    # them. While it is armed, it holds the relay's per-packet state; every Python path that
    # reads or changes that state, or changes what the steady state is (where media goes), takes
    # it back first (`_steady_collect`, which disarms), and the datagram handlers re-arm at their
    # end (`_steady_arm`: a no-op while armed, and arms only in the call's steady state). Never
    # arm in the middle of handling a datagram: the rest of it would change state C holds.
    # Datagrams that touch none of it (a stranger's garbage on the unconnected sockets, a STUN
    # check from another candidate) leave the C relay armed and cost nothing more.

    def _steady_start(self) -> None:
        """Both twins up: give them to a C relay (not armed yet: the caller's `_steady_arm`).

        A browser twin with no socket (`_twin`, a shared port without twins) is the shared port
        and the peer's address: the C relay sends from the port to the peer (`browser_dest`), and
        `serve_shared` hands it the peer's datagrams (`browser_in`)."""
        browser_twin, sip_twin, peer = self._browser_twin, self._sip_twin, self._browser_twin_peer
        if _steady is None or not self._plane.steady or sip_twin is None or peer is None:
            return
        dest = None if browser_twin is not None else peer
        self._steady_stop()
        try:
            steady = _steady.SteadyRelay(
                (browser_twin or self._browser).fileno(),
                sip_twin.fileno(),
                self._buf,
                self._browser_steady_punt,
                self._sip_steady_punt,
                dest,
            )
        except ValueError:  # an address C cannot send to (an IPv6 zone): Python relays this call
            return
        self._steady = steady
        if browser_twin is not None:
            self._plane.replace(browser_twin, steady.browser)
        elif self._browser_port is not None:
            self._browser_port.route_steady(peer, steady)  # the port's C reader: peer -> steady
        self._plane.replace(sip_twin, steady.sip)

    def _steady_stop(self) -> None:
        """Back to Python handlers on the twins (one is about to move or close)."""
        steady = self._steady
        if steady is None:
            return
        self._steady_collect()
        self._steady = None
        peer = self._browser_twin_peer
        if self._browser_twin is None and peer is not None and self._browser_port is not None:
            self._browser_port.unroute_steady(peer, steady)
        if self._browser_twin is not None:
            self._plane.replace(self._browser_twin, self._browser_twin_datagram)
        if self._sip_twin is not None:
            self._plane.replace(self._sip_twin, self._sip_twin_datagram)

    def _steady_collect(self) -> None:
        """Take the relay's state and the counters back from the C relay; it punts until re-armed."""
        steady = self._steady
        if steady is None:
            return
        got = steady.collect()
        if got is None:  # not armed: Python has it all
            return
        rewrite, rec_to_sip, rec_to_browser, to_sip, to_browser, (rtp, last_media, send_failed) = got
        self.relay.absorb_steady(rewrite, rec_to_sip, rec_to_browser, to_sip, to_browser)
        self.demux.rtp += rtp
        if last_media is not None:
            self._last_browser_media = last_media
        self.edge.send_failed += send_failed

    def _steady_arm(self) -> None:
        """Arm the C relay when the call is in its steady state: what the Python hot paths check."""
        steady = self._steady
        if steady is None or steady.armed:
            return
        sip, latch, sip_peer, browser_peer = (
            self._sip,
            self._latch,
            self._sip_twin_peer,
            self._browser_twin_peer,
        )
        if (
            self._keyed
            and sip is not None
            and sip.may_send
            and latch is not None
            and sip_peer is not None
            and sip.rtp == sip_peer
            and latch.rtp_source == sip_peer
            and browser_peer is not None
            and self.browser_address == browser_peer
            and self._media_source == browser_peer
        ):
            args = self.relay.steady_args()
            if args is not None:
                steady.arm(*args)

    def _browser_steady_punt(self, n: int, now: float) -> None:
        """A datagram from the browser's twin that the C relay left to Python (in the buffer)."""
        self.edge.punted += 1
        self._steady_collect()
        peer = self._browser_twin_peer
        if peer is not None:
            self._browser_process(n, peer, now)
        self._steady_arm()

    def _sip_steady_punt(self, n: int, now: float) -> None:
        """A datagram from the SIP leg's twin that the C relay left to Python (in the buffer)."""
        self.edge.punted += 1
        self._steady_collect()
        peer = self._sip_twin_peer
        if peer is not None:
            self._sip_rtp_process(n, peer, now)
        self._steady_arm()

    def _sip_rtcp_datagram(self, now: float) -> bool:
        """One datagram from the SIP RTCP socket, relayed inline; False if there was none."""
        try:
            n, src = self._sip_rtcp.recvfrom_into(self._buf)
        except OSError:
            return False
        if len(src) != 2:
            src = _addr(src)
        try:
            if not self._accept_sip_source(self._view[:n], src, True):
                return True
            dest = self.browser_address
            if dest is None:
                self.edge.no_browser_address += 1
                return True
            out = self.relay.sip_rtcp(self._view[:n], now)
            if out is not None:
                self._send(self._browser, out, dest)
            return True
        finally:
            self._steady_arm()

    def _accept_sip_source(self, data: memoryview, src: Address, rtcp: bool) -> bool:
        sip, latch = self._sip, self._latch
        if sip is None or latch is None:
            self.edge.no_sip_address += 1
            return False
        if rtcp:
            if src == sip.rtcp and src == latch.rtcp_source:
                return True  # the hot path
            before = latch.rtcp_source
            verdict = latch.rtcp_untrusted(data, src)
        else:
            if src == sip.rtp and src == latch.rtp_source:
                return True  # the hot path
            before = latch.rtp_source
            verdict = latch.rtp_untrusted(data, src)
        match verdict:
            case Verdict.ACCEPT:
                self._on_latched(sip, latch, before, rtcp)
                return True
            case Verdict.LEARNING:
                self.edge.latch_learning += 1
            case Verdict.INVALID:
                self.edge.latch_invalid += 1
            case Verdict.UNKNOWN_SOURCE:
                pass
        self.edge.unknown_source += 1
        return False

    def _on_latched(self, sip: SipRemote, latch: SourceLatch, before: Address | None, rtcp: bool) -> None:
        """A source was (re)latched: media to SIP goes there from now on (RFC 4961)."""
        rtp_to = latch.rtp_source or sip.rtp
        rtcp_to = latch.rtcp_source or sip.rtcp
        if (rtp_to, rtcp_to) == (sip.rtp, sip.rtcp):
            return
        now_latched = latch.rtcp_source if rtcp else latch.rtp_source
        if now_latched != before and now_latched is not None:
            expected = latch.expected_rtcp if rtcp else latch.expected_rtp
            if now_latched != expected:
                self.edge.latched += 1
                self.log.info(
                    "SIP %s comes from %s:%d, not %s:%d: latched",
                    "RTCP" if rtcp else "RTP", *now_latched, *expected,
                )  # fmt: skip
        self._steady_collect()  # media to SIP goes elsewhere: no longer C's steady state
        self._sip = SipRemote(rtp_to, rtcp_to, sip.codec_map, sip.may_send)


@asynccontextmanager
async def open_media(
    ports: PortSource,
    browser_offer: str,
    *,
    advertise_hosts: Sequence[str],
    sip_host: str,
    certificate: DtlsCertificate,
    plane: MediaPlane,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    media_timeout: float | None = MEDIA_TIMEOUT,
    consent_timeout: float = CONSENT_TIMEOUT,
    token: Callable[[int], bytes] = secrets.token_bytes,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    browser_port: SharedBrowserPort | None = None,
) -> AsyncIterator[MediaSession]:
    """Allocate the call's ports and negotiate both legs; yields the `MediaSession`.

    Leases one UDP port towards the browser (none with `browser_port`, the worker's shared port:
    rtp.browser_port; it carries the candidates, and the call's ufrag is reserved on it, unique
    among the worker's live calls) and an RTP/RTCP pair towards SIP, answers the
    browser's offer (ICE-lite with one host candidate per `advertise_hosts` entry on the browser
    port, our `certificate`'s fingerprint, a=setup per RFC 8842) and writes the RTP/AVP offer for
    the INVITE (`sip_host` in c=). Raises `SdpParseError`/`NegotiationError` (488) for an
    unusable offer, `PortsExhausted` from the allocator. `consent_timeout` is RFC 7675's 30 s
    (ICE consent lapses that long after the browser's last valid check). On exit sends DTLS
    close_notify and gives the ports back. `token` is the randomness for ICE credentials, SSRC and session id.
    """
    if not advertise_hosts:
        raise ValueError("at least one address to advertise to the browser is needed")
    shared = browser_port
    async with _browser_socket(ports, shared) as browser_sock, ports.udp_pair() as (rtp_sock, rtcp_sock):
        bound = shared.socket if shared is not None else browser_sock
        assert bound is not None  # _browser_socket leased one without a shared port
        browser_port_number = int(bound.getsockname()[1])
        sip_rtp_port = int(rtp_sock.getsockname()[1])
        ufrag, pwd = token(4).hex(), token(12).hex()  # ice-chars, 8 and 24 long (RFC 8445 5.3)
        if shared is not None:
            ufrag = _reserve_ufrag(shared, ufrag, token)
        try:
            session_id = int.from_bytes(token(8), "big") >> 2
            relay = Relay(
                EMPTY_CODEC_MAP,
                ssrc=int.from_bytes(token(4), "big"),
                initial_sequence=int.from_bytes(token(2), "big"),
                initial_timestamp=int.from_bytes(token(4), "big"),
            )
            candidates = [(host, browser_port_number) for host in advertise_hosts]
            answer, browser = answer_browser_offer(
                browser_offer,
                ice_ufrag=ufrag,
                ice_pwd=pwd,
                fingerprint_sha256=certificate.fingerprint_sha256,
                candidates=candidates,
                session_id=session_id,
                ssrc=relay.ssrc,
            )
            del browser_offer  # the caller has it: not kept for the call's life by this frame (~5 KB)
            sip_offer = offer_for_sip(host=sip_host, rtp_port=sip_rtp_port, session_id=session_id)
            role = DtlsRole.CLIENT if browser.we_are_dtls_client else DtlsRole.SERVER
            session = MediaSession(
                browser_sock=browser_sock,
                browser_port=shared,
                sip_rtp_sock=rtp_sock,
                sip_rtcp_sock=rtcp_sock,
                ice=IceLiteAgent(ufrag, pwd, browser.ice_ufrag, browser.ice_pwd, consent_timeout),
                dtls=DtlsEndpoint(
                    role, certificate, (browser.fingerprint.algorithm, browser.fingerprint.value)
                ),
                plane=plane,
                relay=relay,
                browser_answer=answer,
                sip_offer=sip_offer,
                handshake_timeout=handshake_timeout,
                media_timeout=media_timeout,
                negotiation=Negotiation(
                    browser=browser,
                    fingerprint_sha256=certificate.fingerprint_sha256,
                    candidates=candidates,
                    session_id=session_id,
                    sip_host=sip_host,
                    sip_rtp_port=sip_rtp_port,
                ),
                logger=logger,
            )
        except BaseException:
            if shared is not None:
                shared.release(ufrag)  # the session's close() does it once it exists
            raise
        try:
            yield session
        finally:
            session.close()


@asynccontextmanager
async def _browser_socket(
    ports: PortSource, shared: SharedBrowserPort | None
) -> AsyncIterator[trio.socket.SocketType | None]:
    """The call's own browser socket leased from `ports`, or None with a shared port."""
    if shared is not None:
        yield None
        return
    async with ports.udp() as sock:
        yield sock


def _reserve_ufrag(shared: SharedBrowserPort, ufrag: str, token: Callable[[int], bytes]) -> str:
    """`ufrag`, or another draw if a live call of the worker has it (rtp.browser_port: checks
    find their call by our ufrag). LocalProtocolError if 8 draws are all taken."""
    for _ in range(8):
        if shared.reserve(ufrag):
            return ufrag
        ufrag = token(4).hex()
    raise LocalProtocolError("no unused ICE ufrag after 8 draws (is `token` random?)")
