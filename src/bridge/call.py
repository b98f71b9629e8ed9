"""One call, one nursery: the MCCP session, ICE/DTLS, the relay and the SIP dialog.

Theory of operation
-------------------
`run_call` runs one authenticated browser call to its end and returns how it ended (`CallEnd`)::

    route the number (404/480 end here: nothing is sent towards SIP)
    async with open_media(...):                 # ports, ICE-lite + DTLS answer, RTP/AVP offer (503/488)
        page <- trying, progress(answer SDP)    # ICE and DTLS run while the phone rings
        nursery (the call's one nursery):
            (its own task)  the page: messages (hangup, dtmf: SIP INFO in dtmf_mode "info"), its
                            socket going away, and the SIP side's silence (no RTP for media_timeout
                            once answered, not on hold) as a deadline of that wait
            ice_dtls_task   media.run_ice_dtls(): the browser port served by the worker's media
                            plane (STUN, DTLS, SRTP -> RTP), this task its timers; MediaEnded ends
                            the call (handshake timeout, DTLS failure, consent lost, no browser media)
            relay_task      media.run_relay(): the SIP port pair served by the plane (RTP -> SRTP,
                            RTCP both ways) while it runs
            sip_task        ua.call(): INVITE ... 180/183/200 ... re-INVITE, INFO, BYE; ring timeout
    page <- hangup(code, reason)                # shielded, bounded

The task that sees the end calls `_Call.finish(code, reason, by)`: the first reason wins and the
call's nursery is cancelled, so every task stops at once. The clean-up is done by the context
managers on the way out, each bounded and shielded where it must talk to a peer: the SIP call
sends CANCEL before the answer (and waits for the 487) or BYE after it (`SipUA.call`, whose
hang-up and response reader are shielded from that cancellation), the media plane sends DTLS
close_notify and gives its ports back (`open_media`), and the page gets its `hangup` here. A
cancellation from outside (the bridge stopping) ends the call the same way with 503 "bridge is
shutting down". Codes follow SIP: 200 for a normal end after the answer, 487 when the page hangs
up before it, the SIP final response otherwise. No task only waits: an established call holds
these four tasks (and the SIP call's response reader), one nursery here and one in `SipUA.call`
(memory per call, issue 6).

A bug in one of the call's tasks ends that call only: 500, one error record (`except*` here).

One log record per call at its end (caller, callee, Call-ID, set-up time, duration, end reason and
code, packets and drops each way, RTP lost and interarrival jitter each way, SRTP failures), with
the fields also in `record.call`; `CallLog` prefixes every line of the call with its context and
puts it in `record.call_ctx`. The same end feeds `bridge.metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, assert_never

import trio
from bridge.config import DtmfMode
from bridge.routing import NoRoute, Route
from mccp.messages import Answer, Call, Dtmf, Hangup, HangupRequest, Ping, Progress, Ringing, Trying
from mccp.server import MccpConnection, PageGone
from rtp.errors import NegotiationError, PortsExhausted, SdpParseError
from rtp.media import MediaEnded, MediaSession, open_media
from rtp.relay import DropCause
from sip.calls import Answered, CallEvent, EarlyMedia, Ended, InfoReceived, OutgoingCall, ReOffer
from sip.calls import Ringing as SipRinging
from sip.calls import Trying as SipTrying

if TYPE_CHECKING:
    from bridge.app import AuthenticatedCall
    from bridge.services import CallServices

log = logging.getLogger("bridge.call")

GRACE = 3.0  # seconds for telling the page how the call ended
EndedBy = Literal["page", "sip", "media", "bridge"]


@dataclass(frozen=True, slots=True)
class CallEnd:
    """How a call ended: a SIP-style code and reason, and which side ended it."""

    code: int
    reason: str
    by: EndedBy


@dataclass(slots=True)
class _Call:
    """The state the call's tasks share; `finish` records the end and cancels the call."""

    started_at: float
    scope: trio.CancelScope | None = None  # the call's nursery, once open
    end: CallEnd | None = None
    sip: OutgoingCall | None = None
    answered_at: float | None = None
    first_response_at: float | None = None
    page_gone: bool = False  # the page's socket is gone: nothing more can be sent to it
    # The SIP side's media description last changed (answer, re-INVITE) at `sip_media_at`; the
    # page's wait (`wake_page`, its deadline the SIP side's silence) is then woken to re-arm.
    sip_media_at: float | None = None
    wake_page: Callable[[], object] | None = None

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    def sip_media_set(self, now: float) -> None:
        """Record that the SIP side's media changed (answered, re-INVITE) and wake its watcher."""
        self.sip_media_at = now
        if self.wake_page is not None:
            self.wake_page()

    def finish(self, code: int, reason: str, by: EndedBy) -> None:
        if self.end is None:
            self.end = CallEnd(code, reason, by)
        if self.scope is not None:
            self.scope.cancel()


class CallLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes every line of one call with its context: page address, caller -> callee, and the
    SIP Call-ID once the INVITE is out; the same fields go to handlers as `record.call_ctx`."""

    def __init__(self, logger: logging.Logger, ctx: dict[str, str | None]) -> None:
        super().__init__(logger, ctx)
        self.ctx = ctx  # mutable: the Call-ID is added once the INVITE is out

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        ctx = self.ctx
        prefix = f"{ctx['remote']} {ctx['caller']}->{ctx['callee']}"
        if ctx.get("call_id"):
            prefix += f" {ctx['call_id']}"
        extra = dict(kwargs.get("extra") or {})
        extra["call_ctx"] = dict(ctx)
        kwargs["extra"] = extra
        return f"[{prefix}] {msg}", kwargs


def call_logger(accepted: AuthenticatedCall) -> CallLog:
    """The logger of one call (module logger `bridge.call`, context from the accepted call)."""
    host, port = accepted.remote
    remote = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return CallLog(
        log, {"remote": remote, "caller": accepted.caller, "callee": accepted.callee, "call_id": None}
    )


async def run_call(conn: MccpConnection, accepted: AuthenticatedCall, services: CallServices) -> CallEnd:
    """Run one call to its end (see the module docstring); returns how it ended."""
    offer = accepted.take_offer()  # not kept for the call's life (nor in `request`)
    request = accepted.call
    clog = call_logger(accepted)
    config = services.config
    started_at = trio.current_time()
    await services.refresh_bindings()  # a worker that does not answer REGISTER: bindings.json
    route = services.route(request.cld, caller=request.clr, password=request.pwd)
    if isinstance(route, NoRoute):
        end = CallEnd(route.code, route.reason, "bridge")
        await _tell_page(conn, end)
        _log_end(clog, services, request, None, end, started_at, None, None)
        return end
    state = _Call(started_at)
    media: MediaSession | None = None
    try:
        async with open_media(
            services.ports,
            offer,
            advertise_hosts=services.advertise_hosts,
            sip_host=services.sip_media_host,
            certificate=services.certificate,
            plane=services.plane,
            handshake_timeout=services.handshake_timeout,
            media_timeout=config.media_timeout,
            logger=clog,
            browser_port=services.browser_port,
        ) as media:
            del offer
            services.metrics.media_opened(id(media), media.stats)
            await conn.send(Trying())
            await conn.send(Progress(media.browser_answer))
            try:
                async with trio.open_nursery() as call:
                    state.scope = call.cancel_scope
                    call.start_soon(_sip_task, conn, state, services, route, request, media, clog, call)
                    call.start_soon(_media_task, media.run_ice_dtls, state)
                    call.start_soon(_media_task, media.run_relay, state)
                    await _page(conn, state, services, media, config.media_timeout)
            except* Exception as group:  # a bug in one of the call's tasks: this call ends, not the bridge
                clog.error("call failed: %r", group.exceptions, exc_info=group)
                state.end = CallEnd(500, "Server Internal Error", "bridge")
            if state.end is None:  # cancelled from outside: the bridge is stopping
                state.end = CallEnd(503, "bridge is shutting down", "bridge")
    except PortsExhausted:
        state.end = CallEnd(503, "Service Unavailable (no media ports left)", "bridge")
    except (SdpParseError, NegotiationError) as exc:
        state.end = CallEnd(488, f"Not Acceptable Here: {exc}", "bridge")
    except PageGone as exc:  # the page left before the call was set up
        state.page_gone = True
        state.end = state.end or CallEnd(487, f"page gone: {exc}", "page")
    except trio.Cancelled:
        if state.end is None:
            state.end = CallEnd(503, "bridge is shutting down", "bridge")
        raise
    finally:
        end = state.end or CallEnd(500, "Server Internal Error", "bridge")
        if not state.page_gone:  # MCCP: a hangup either way ends with one `hangup` to the page
            await _tell_page(conn, end)
        if route.credentials is not None and end.by == "sip" and end.code in (401, 403, 407):
            # Upstream mode: the upstream's digest challenge refused the caller's password; it
            # counts towards the caller's throttle and lock-out like a local failure.
            services.context.upstream_rejected(accepted)
            services.metrics.upstream_rejected()
        _log_end(clog, services, request, state, end, started_at, media, state.sip)
    return end


async def _tell_page(conn: MccpConnection, end: CallEnd) -> None:
    """Send the page its `hangup` (bounded and shielded: it runs during cancellation too)."""
    with trio.move_on_after(GRACE, shield=True):
        with contextlib.suppress(PageGone):
            await conn.send(Hangup(end.code, end.reason))


async def _page(
    conn: MccpConnection, state: _Call, services: CallServices, media: MediaSession, silence_limit: float
) -> None:
    """Page messages during the call: hangup, DTMF; the socket going away ends the call. The wait
    for the next message has the SIP side's silence as its deadline (`_silence_deadline`). Runs in
    the call's own task, so a cancellation from outside (the bridge stopping) is seen here first:
    it becomes the call's end, 503."""
    armed_at: float | None = None
    state.wake_page = conn.wake
    try:
        while True:
            deadline, armed_at = _silence_deadline(state, media, silence_limit, armed_at)
            if trio.current_time() >= deadline:
                state.finish(408, f"no media from the SIP side for {silence_limit:g} s", "media")
                return
            message = await conn.receive_until(deadline)  # woken by state.sip_media_set
            match message:
                case None:
                    continue  # the deadline, or the SIP side's media changed: re-arm
                case HangupRequest():
                    if state.answered:
                        state.finish(200, "hung up by the caller", "page")
                    else:
                        state.finish(487, "cancelled by the caller", "page")
                    return
                case Dtmf(digits=digits):
                    await _send_dtmf_info(state, services, digits)
                case Call() | Ping():
                    continue  # the server answers these (a second call gets an `error`)
                case _:
                    assert_never(message)
    except PageGone as exc:
        state.page_gone = True
        code = 200 if state.answered else 487
        state.finish(code, f"page gone: {exc}", "page")
    except trio.Cancelled:  # without an end recorded, the cancellation came from outside
        state.finish(503, "bridge is shutting down", "bridge")
        raise


def _silence_deadline(
    state: _Call, media: MediaSession, limit: float, armed_at: float | None
) -> tuple[float, float | None]:
    """When an answered call ends for lack of RTP from the SIP side (rtp.media watches the browser
    side), and since when silence counts: (deadline, armed_at).

    Silence is expected, and not counted, while the SIP side's SDP says it does not send (recvonly
    or inactive, RFC 3264 section 8.4), or before the answer: deadline infinity, not armed. Once
    armed, the deadline is the last SIP-side packet (or the moment the watch began) plus `limit`,
    recomputed when it passes or the SIP side's media changes. No polling: an established call
    with media flowing costs one wake-up per `limit` seconds.
    """
    negotiation = media.negotiation
    sip = negotiation.sip if negotiation is not None else None
    if state.answered_at is None or sip is None or not sip.direction.sends:
        return math.inf, None
    if armed_at is None:  # silence counts from when it became unexpected
        armed_at = state.sip_media_at if state.sip_media_at is not None else trio.current_time()
    last = media.relay.to_browser.last_packet_time
    return max(armed_at, last if last is not None else armed_at) + limit, armed_at


async def _send_dtmf_info(state: _Call, services: CallServices, digits: str) -> None:
    """In dtmf_mode "info", send each digit as SIP INFO application/dtmf-relay; RFC 4733 events
    from the page's RTCDTMFSender already travel in the media (payload type mapped by the relay)."""
    if services.config.dtmf_mode is not DtmfMode.INFO or state.sip is None or not state.answered:
        return
    for digit in digits:
        body = f"Signal={digit}\r\nDuration=160\r\n".encode()
        status = await state.sip.send_info(body, "application/dtmf-relay")
        if status >= 300:
            log.info("DTMF INFO %s answered %d", digit, status)


async def _media_task(run: Callable[[], Awaitable[None]], state: _Call) -> None:
    """Run one of the media plane's tasks; `MediaEnded` ends the call with its reason."""
    try:
        await run()
    except MediaEnded as exc:
        state.finish(exc.code, exc.reason, "media")


async def _sip_task(
    conn: MccpConnection,
    state: _Call,
    services: CallServices,
    route: Route,
    request: Call,
    media: MediaSession,
    clog: CallLog,
    nursery: trio.Nursery,
) -> None:
    """Place the SIP call and follow its events until the call ends; then leaving `ua.call`
    sends CANCEL (and takes the 487) or BYE, bounded by `SipUA.grace`.

    The call's end (`_Call.finish`) and a cancellation from outside (the bridge stopping) both
    leave `ua.call` by cancellation: the UA's hang-up is shielded (bounded by its grace) and its
    response reader outlives the cancellation until the hang-up is done.
    """
    config = services.config
    async with services.ua.call(
        route.target,
        caller=request.clr,
        sdp=media.sip_offer.encode(),
        credentials=route.credentials,
        outbound_proxy=route.outbound_proxy,
        nursery=nursery,  # the response reader in the call's nursery
    ) as sip:
        state.sip = sip
        clog.ctx["call_id"] = sip.call_id
        clog.info("SIP call %s to %s", sip.call_id, route.target)
        if not await _ringing(conn, state, media, sip, clog, config.ring_timeout):
            state.finish(480, f"no answer within {config.ring_timeout:g}s", "bridge")
        else:
            async for event in sip.events:
                await _on_sip_event(event, conn, state, media, sip, clog)
    if state.end is None:
        ended = sip.ended
        if ended is None:
            state.finish(500, "SIP call ended without a final state", "bridge")
        else:
            state.finish(ended.code, ended.reason, "sip")


async def _ringing(
    conn: MccpConnection, state: _Call, media: MediaSession, sip: OutgoingCall, clog: CallLog, limit: float
) -> bool:
    """Follow the SIP call's events until it is answered (True) or `limit` seconds have passed
    (False); also True when the events end. A function of its own, so that the last event (the
    answer and its SDP) and the timeout's scope are not kept for the call's life."""
    with trio.move_on_after(limit) as ring:
        async for event in sip.events:
            if await _on_sip_event(event, conn, state, media, sip, clog):
                break
    return not ring.cancelled_caught


async def _on_sip_event(
    event: CallEvent,
    conn: MccpConnection,
    state: _Call,
    media: MediaSession,
    sip: OutgoingCall,
    clog: CallLog,
) -> bool:
    """Act on one SIP call event; returns True once the call is answered."""
    now = trio.current_time()
    if state.first_response_at is None:
        state.first_response_at = now
    try:
        match event:
            case SipTrying():
                return False
            case SipRinging():
                await conn.send(Ringing())
                return False
            case EarlyMedia(sdp=sdp):
                media.set_sip_answer(sdp.decode("utf-8", "replace"))
                clog.info("early media from SIP")
                return False
            case Answered(sdp=sdp):
                if sdp:
                    media.set_sip_answer(sdp.decode("utf-8", "replace"))
                state.answered_at = now
                state.sip_media_set(now)
                await conn.send(Answer(media.browser_answer))
                clog.info("answered after %.0f ms", (now - state.started_at) * 1000)
                return True
            case ReOffer(sdp=sdp):
                answer = media.answer_sip_offer(sdp.decode("utf-8", "replace"))
                state.sip_media_set(now)
                await sip.accept_reoffer(answer.encode())
                clog.info("re-INVITE from SIP answered")
                return False
            case InfoReceived(content_type=content_type):
                clog.info("INFO from SIP (%s)", content_type)
                return False
            case Ended(code=code, reason=reason, by=by):
                if code < 300:
                    state.finish(200, reason or "hung up by the callee", "sip")
                else:
                    state.finish(code, reason, "sip" if by != "timeout" else "bridge")
                return False
            case _:
                assert_never(event)
    except (SdpParseError, NegotiationError) as exc:
        state.finish(488, f"Not Acceptable Here: SIP side's SDP: {exc}", "sip")
        return False
    except PageGone as exc:
        state.page_gone = True
        state.finish(200 if state.answered else 487, f"page gone: {exc}", "page")
        return False


def _log_end(
    clog: CallLog,
    services: CallServices,
    request: Call,
    state: _Call | None,
    end: CallEnd,
    started_at: float,
    media: MediaSession | None,
    sip: OutgoingCall | None,
) -> None:
    """The one structured record of a call, at its end (also fed to the metrics)."""
    now = trio.current_time()
    answered_at = state.answered_at if state is not None else None
    setup = answered_at - started_at if answered_at is not None else None
    record: dict[str, object] = {
        "caller": request.clr,
        "callee": request.cld,
        "call_id": sip.call_id if sip is not None else None,
        "setup_ms": round(setup * 1000) if setup is not None else None,
        "duration_s": round(now - answered_at, 3) if answered_at is not None else 0.0,
        "code": end.code,
        "reason": end.reason,
        "ended_by": end.by,
    }
    stats = media.stats() if media is not None else None
    if stats is not None:
        to_sip, to_browser, edge = stats.to_sip, stats.to_browser, stats.edge
        record.update(
            to_sip_packets=to_sip.packets,
            to_browser_packets=to_browser.packets,
            # What the relay refused plus what the edge could not deliver, each way.
            to_sip_dropped=to_sip.dropped_total + edge.not_validated + edge.before_keys + edge.on_hold,
            to_browser_dropped=to_browser.dropped_total + edge.no_browser_address + edge.unknown_source,
            # Measured as the RTP arrives at the relay (RFC 3550 A.3, A.8): lost on the way from
            # the browser (to_sip) and from the SIP side (to_browser); jitter in ms, the current
            # estimate and the highest it reached.
            to_sip_lost=to_sip.lost,
            to_browser_lost=to_browser.lost,
            to_sip_jitter_ms=round(to_sip.jitter * 1000, 2),
            to_browser_jitter_ms=round(to_browser.jitter * 1000, 2),
            to_sip_jitter_max_ms=round(to_sip.reception.max_jitter * 1000, 2),
            to_browser_jitter_max_ms=round(to_browser.reception.max_jitter * 1000, 2),
            ringing_dropped=edge.no_sip_address,
            send_failed=edge.send_failed,
            punted=edge.punted,  # media datagrams the C relay left to Python (0 without it)
            srtp_failures=to_sip.dropped.get(DropCause.SRTP_AUTH, 0)
            + to_sip.dropped.get(DropCause.SRTP_REPLAY, 0),
            dtls=stats.dtls_state.value,
            ice_checks=stats.ice.checks_ok,
        )
    if clog.isEnabledFor(logging.INFO):  # the text is built only for a log that shows it
        text = " ".join(f"{key}={_fmt(value)}" for key, value in record.items())
        clog.info("call end: %s", text, extra={"call": record})
    services.metrics.call_ended(
        by=end.by,
        code=end.code,
        setup_seconds=setup,
        media=stats,
        key=id(media) if media is not None else None,
    )


def _fmt(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if isinstance(value, str) and (" " in value or not value):
        return repr(value)
    return str(value)
