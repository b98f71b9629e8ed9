"""Calls on Trio: an outgoing call (UAC) and an incoming one (UAS hook), their dialogs and events.

Theory of operation (RFC 3261 §12-§15):

* `OutgoingCall.run()` sends the INVITE through `SipUA.transact()`, maps provisional responses
  to events (100 -> Trying, 180/181/182 -> Ringing, 183 with SDP -> EarlyMedia), retries ONCE
  with digest credentials on 401/407 (a second challenge ends the call as 403), ACKs a 2xx via
  the route set (Answered), and ends the call on any other final response (3xx not followed).
  Timer B -> Ended(408, by="timeout"); a transport error or unresolvable host -> Ended(503).
* `hangup()` sends CANCEL while the INVITE is pending (after a provisional response, §9.1) and
  waits for the 487, or BYE once confirmed. A 2xx racing a CANCEL is ACKed and then BYEd (§15).
* Requests from the far end inside the dialog (BYE, INFO, re-INVITE) arrive through the UA's
  dispatcher by Call-ID and our tag: BYE -> 200 + Ended(by="remote"), INFO -> 200 +
  InfoReceived, re-INVITE -> ReOffer, answered by `accept_reoffer()` (§14.2: 491 while ours is
  pending, 500 + Retry-After while theirs is unanswered; one still unanswered when the call ends
  gets 487). An offer-less re-INVITE (session refresh) is answered with our current SDP.
* The dialog state (route set, remote target, CSeq order, glare, the cached ACK for a 2xx) is
  the core's `sip.dialog.Dialog`; this module only decides and sends.
* A 2xx no call takes (another fork's after the answer, or one after the call gave up before any
  1xx) is ended by the UA with `end_unwanted_answer_ack` (its own dialog and ACK, at once) and
  `end_unwanted_answer_bye` (RFC 3261 §13.2.2.4).
* `IncomingCall` is what a UAS hook (the echo extension) gets: `answer(sdp)`, `reject(code)`,
  `hangup()`, and `ended` (set by BYE or CANCEL).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

import trio
from sip.auth import DigestClient, challenges, supported_algorithm
from sip.dialog import Dialog, make_cancel
from sip.errors import LocalProtocolError, SipParseError
from sip.headers import NameAddr
from sip.message import Request, Response, make_request
from sip.resolver import ResolveError
from sip.transport import Address, Transport, TransportError
from sip.uri import Params, SipUri, Uri

if TYPE_CHECKING:
    from sip.ua import SipUA

__all__ = [
    "ALLOW",
    "EVENTS_MAX",
    "Answered",
    "CallEvent",
    "CallEvents",
    "CallState",
    "EarlyMedia",
    "Ended",
    "IncomingCall",
    "InfoReceived",
    "OutgoingCall",
    "ReOffer",
    "Ringing",
    "TransactionTimeout",
    "Trying",
    "end_unwanted_answer_ack",
    "end_unwanted_answer_bye",
    "uri_address",
]

log = logging.getLogger("sip.calls")

_ALGORITHM_PREFERENCE = {"SHA-512-256": 0, "SHA-256": 1, "MD5": 2}

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, REGISTER"


# --------------------------------------------------------------------------- call events


@dataclass(frozen=True, slots=True)
class Trying:
    """100 Trying: the next hop has the INVITE."""


@dataclass(frozen=True, slots=True)
class Ringing:
    """180/181/182 (or 183 without SDP)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class EarlyMedia:
    """183 Session Progress with an SDP answer (early media)."""

    sdp: bytes


@dataclass(frozen=True, slots=True)
class Answered:
    """200 OK to the INVITE (already ACKed); `sdp` is the far end's answer."""

    sdp: bytes


@dataclass(frozen=True, slots=True)
class ReOffer:
    """A re-INVITE with a new offer (hold, new address or codec): answer with `accept_reoffer()`."""

    sdp: bytes


@dataclass(frozen=True, slots=True)
class InfoReceived:
    """An in-dialog INFO from the far end (already answered 200)."""

    body: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class Ended:
    """The call is over. `code` follows SIP (486 busy, 487 cancelled, 408 timeout, 503...)."""

    code: int
    reason: str
    by: Literal["remote", "local", "timeout"]


CallEvent = Trying | Ringing | EarlyMedia | Answered | ReOffer | InfoReceived | Ended


EVENTS_MAX = 256  # events a call holds for its reader; more are dropped (and logged)


class CallEvents:
    """One call's events, in order, for one reader: ``async for event in call.events`` (or
    `receive`), until the call has ended (`trio.EndOfChannel`).

    The call adds events without waiting (`put`, False when it must drop one: closed, or
    `EVENTS_MAX` unread). What trio's memory channel did here, without its buffer deque, ordered
    dicts and sets (~2 KiB per call; memory, issue 6). A cancelled `receive` loses nothing.
    """

    __slots__ = ("_closed", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[CallEvent] = []
        self._closed = False
        self._waiter: trio.lowlevel.Task | None = None

    def put(self, event: CallEvent) -> bool:
        if self._closed or len(self._items) >= EVENTS_MAX:
            return False
        self._items.append(event)
        self._wake()
        return True

    def close(self) -> None:
        """No more events: the reader gets those left, then `trio.EndOfChannel`."""
        self._closed = True
        self._wake()

    async def receive(self) -> CallEvent:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._items:
            if self._closed:
                raise trio.EndOfChannel
            if self._waiter is not None:
                raise trio.BusyResourceError("another task is reading this call's events")
            self._waiter = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        event = self._items.pop(0)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return event

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def __aiter__(self) -> CallEvents:
        return self

    async def __anext__(self) -> CallEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def _wake(self) -> None:
        task, self._waiter = self._waiter, None
        if task is not None:
            trio.lowlevel.reschedule(task)


class CallState(Enum):
    """Where an outgoing call is (RFC 3261 §13, §15)."""

    CALLING = "calling"  # INVITE sent, nothing back yet
    PROCEEDING = "proceeding"  # a provisional response came back
    CONFIRMED = "confirmed"  # 2xx received and ACKed
    TERMINATING = "terminating"  # CANCEL or BYE sent
    TERMINATED = "terminated"


class TransactionTimeout(Exception):
    """Timer B/F fired: no final response within 64*T1."""


# --------------------------------------------------------------------------- helpers


def uri_address(uri: Uri, default: Transport = Transport.UDP) -> Address:
    """Where to send a request for `uri` (RFC 3263 without DNS: host, port or 5060, transport)."""
    if not isinstance(uri, SipUri):
        raise TransportError(f"cannot route to a non-SIP URI {uri}")
    maddr = uri.params.get("maddr")
    host = maddr or uri.host_no_brackets
    try:
        transport = Transport.from_token(uri.transport) if uri.transport else default
    except ValueError as exc:
        raise TransportError(str(exc)) from None
    if uri.scheme == "sips" and transport is not Transport.TLS:
        transport = Transport.TLS  # RFC 3261 §26.2: sips means TLS on every hop
    return Address(host, uri.port or (5061 if transport is Transport.TLS else 5060), transport)


def _sdp_of(message: Request | Response) -> bytes:
    ct = message.content_type
    return message.body if ct is not None and ct.media_type == "application/sdp" and message.body else b""


# --------------------------------------------------------------------------- calls


def next_hop(request: Request, transport: Transport) -> Address:
    """§8.1.2 / §12.2.1.1: a request goes to its first Route, else to its Request-URI."""
    route = request.route
    return uri_address(route[0].uri if route else request.uri, transport)


class _Call:
    """What both call directions share: the UA, the dialog once there is one, the transport."""

    def __init__(self, ua: SipUA, call_id: str, transport: Transport) -> None:
        self.ua = ua
        self.call_id = call_id
        self.transport = transport
        self.dialog: Dialog | None = None

    @property
    def local_tag(self) -> str | None:
        return self.dialog.local_tag if self.dialog is not None else None

    def local_contact(self, user: str | None) -> NameAddr:
        return self.ua.contact(SipUri(self.ua.host, user), self.transport)

    async def send_in_dialog(
        self, method: str, *, body: bytes = b"", content_type: str | None = None
    ) -> Response:
        """Send an in-dialog non-INVITE request (§12.2.1.1) and return its final response."""
        assert self.dialog is not None
        request = self.dialog.create_request(
            method, via=self.ua.new_via(self.transport), headers=self.ua.common_headers(),
            body=body, content_type=content_type,
        )  # fmt: skip
        response = await self.ua.transact(request, next_hop(request, self.transport))
        self.dialog.receive_response(response)
        return response

    async def answer_in_dialog(
        self, request: Request, status: int, *, body: bytes = b"", content_type: str | None = None
    ) -> None:
        assert self.dialog is not None
        response = self.dialog.response(
            request, status, headers=self.ua.common_headers(), body=body, content_type=content_type
        )
        if request.method == "INVITE":
            await self.ua.send_invite_final(request, response)
        else:
            await self.ua.send_response(request, response)

    async def check_in_dialog(self, request: Request) -> bool:
        """§12.2.2 checks (CSeq order, glare); False when the request was answered here."""
        assert self.dialog is not None
        refusal = self.dialog.receive_request(request)
        if refusal is None:
            return True
        if request.method == "INVITE":
            await self.ua.send_invite_final(request, refusal)
        else:
            await self.ua.send_response(request, refusal)
        return False


class OutgoingCall(_Call):
    """A call placed by `SipUA.call()`. Read `events`; act with hangup/send_info/accept_reoffer."""

    def __init__(
        self,
        ua: SipUA,
        target: SipUri,
        *,
        caller: str,
        display: str | None,
        sdp: bytes,
        credentials: tuple[str, str] | None,
        hop: SipUri,
        preloaded_route: list[NameAddr],
        from_host: str,
    ) -> None:
        super().__init__(ua, f"{ua.token(12)}@{ua.host}", ua.transport.default_transport)
        self.caller = caller
        self.local = NameAddr(SipUri(from_host, caller), display, Params((("tag", ua.token(6)),)))
        self.target = target
        self.offer = sdp
        self.local_sdp = sdp
        self.credentials = credentials
        self.hop = hop  # the outbound proxy, or the target itself
        self.first_hop: Address | None = None  # where the INVITE goes, once located
        self.preloaded_route = preloaded_route
        self.state = CallState.CALLING
        self.cseq = 1
        self.events = CallEvents()
        self._provisional = False  # a provisional response came
        self._final = False  # the final response came (or the INVITE failed)
        self._progress: trio.Event | None = None  # made by hangup() to wait for either
        self._done = trio.Event()
        self._hangup_requested = False
        self._invite: Request | None = None
        self._challenged = False
        self._reinvite: Request | None = None
        self.ended: Ended | None = None

    # ------------------------------------------------------------ public API

    async def hangup(self) -> None:
        """End the call: CANCEL before the final response (then expects 487), BYE after."""
        self._hangup_requested = True
        if self.state in (CallState.CALLING, CallState.PROCEEDING):
            # §9.1: a CANCEL SHOULD NOT be sent before a provisional response arrived.
            if not (self._provisional or self._final):
                progress = self._progress = self._progress or trio.Event()
                with trio.move_on_after(64 * self.ua.t1):
                    await progress.wait()
            if (
                not self._final
                and self._provisional
                and self._invite is not None
                and self.first_hop is not None
            ):
                self.state = CallState.TERMINATING
                cancel = make_cancel(self._invite)
                try:
                    await self.ua.transact(cancel, self.first_hop)
                except (TransactionTimeout, TransportError) as exc:
                    log.info("%s: CANCEL failed: %s", self.call_id, exc or type(exc).__name__)
            with trio.move_on_after(64 * self.ua.t1):
                await self._done.wait()
            if not self._done.is_set():  # §9.1: no final response within 64*T1 after CANCEL
                self._end(487, "Request Terminated", "local")
        elif self.state is CallState.CONFIRMED:
            self.state = CallState.TERMINATING
            self._end(200, "Hangup", "local")
            await self._refuse_pending_reoffer()
            await self._bye()

    async def send_info(self, body: bytes, content_type: str) -> int:
        """Send an in-dialog INFO (e.g. DTMF relay); returns the final status (408 on timeout)."""
        if self.state is not CallState.CONFIRMED:
            raise RuntimeError("INFO needs a confirmed call")
        try:
            response = await self.send_in_dialog("INFO", body=body, content_type=content_type)
        except TransactionTimeout:
            return 408
        except TransportError:
            return 503
        return response.status

    async def accept_reoffer(self, sdp: bytes) -> None:
        """Answer the pending re-INVITE (the last `ReOffer`) with 200 OK and our SDP."""
        if self._reinvite is None:
            raise RuntimeError("no re-INVITE is pending")
        request, self._reinvite = self._reinvite, None
        self.local_sdp = sdp
        await self.answer_in_dialog(request, 200, body=sdp, content_type="application/sdp")

    # ------------------------------------------------------------ internals

    def _emit(self, event: CallEvent) -> None:
        if not self.events.put(event):
            log.warning("%s: event dropped: %s", self.call_id, event)

    def _end(self, code: int, reason: str, by: Literal["remote", "local", "timeout"]) -> None:
        if self.ended is None:
            self.ended = Ended(code, reason, by)
            self.state = CallState.TERMINATED
            self._emit(self.ended)
            self.events.close()
        self._done.set()

    async def _refuse_pending_reoffer(self) -> None:
        """A re-INVITE nobody answered before the call ended still gets a final response."""
        if self._reinvite is not None:
            request, self._reinvite = self._reinvite, None
            await self.answer_in_dialog(request, 487)

    async def _bye(self) -> None:
        try:
            response = await self.send_in_dialog("BYE")
            log.debug("%s: BYE answered %d", self.call_id, response.status)
        except (TransactionTimeout, TransportError, LocalProtocolError) as exc:
            log.info("%s: BYE not answered: %s", self.call_id, exc or type(exc).__name__)

    def _build_invite(self, auth: tuple[str, str] | None) -> Request:
        headers = [*self.ua.common_headers(), ("Allow", ALLOW)]
        if auth is not None:
            headers.append(auth)
        return make_request(
            "INVITE",
            self.target,
            call_id=self.call_id,
            cseq=self.cseq,
            from_=self.local,
            to=NameAddr(self.target),
            via=self.ua.new_via(self.transport),
            contact=self.local_contact(self.caller),
            route=self.preloaded_route,
            headers=headers,
            body=self.offer,
            content_type="application/sdp",
        )

    async def run(self) -> None:
        """Place the call: INVITE, one digest retry, ACK on 2xx; emits events; ends on a final failure."""
        auth: tuple[str, str] | None = None
        try:
            self.first_hop = await self.ua.locate(self.hop, self.transport)
            self.transport = self.first_hop.transport
            while True:
                self._invite = self._build_invite(auth)
                response = await self.ua.transact(self._invite, self.first_hop, self._on_provisional)
                if response.status in (401, 407) and self.credentials is not None and not self._challenged:
                    if self._hangup_requested:
                        self._end(487, "Request Terminated", "local")
                        return
                    auth = self._answer_challenge(response)
                    if auth is None:
                        self._end(response.status, response.reason, "remote")
                        return
                    self._challenged = True
                    self.cseq += 1  # §22.2: the retry is a new request with a higher CSeq
                    continue
                break
        except TransactionTimeout:
            self._set_final()
            self._end(408, "Request Timeout", "timeout")
            return
        except TransportError as exc:
            self._set_final()
            log.info("%s: cannot reach %s: %s", self.call_id, self.first_hop or self.hop, exc)
            # A failed DNS lookup says which name and why, for the page's hangup reason.
            self._end(503, str(exc) if isinstance(exc, ResolveError) else "Service Unavailable", "local")
            return
        self._set_final()
        self.ua.note_upstream_challenge(self, self._challenged)
        if response.status in (401, 407) and self._challenged:
            self._end(403, "Forbidden (authentication failed)", "remote")
        elif 200 <= response.status < 300:
            await self._confirm(response)
        elif self._hangup_requested and response.status == 487:
            self._end(487, response.reason, "local")
        else:
            self._end(response.status, response.reason, "remote")

    def _answer_challenge(self, response: Response) -> tuple[str, str] | None:
        """The credentials header answering a 401/407 (§22.2), or None if it cannot be answered."""
        assert self.credentials is not None
        proxy = response.status == 407
        usable = [c for c in challenges(response) if c.proxy == proxy and supported_algorithm(c.algorithm)]
        if not usable:
            log.info("%s: no usable digest challenge in %d", self.call_id, response.status)
            return None
        # RFC 8760 §2.4: with several challenges, use the strongest algorithm offered.
        usable.sort(key=lambda c: _ALGORITHM_PREFERENCE.get(c.algorithm.upper(), 9))
        challenge = usable[0]
        user, password = self.credentials
        try:
            creds = DigestClient(user, password).authorize(
                challenge, "INVITE", str(self.target), cnonce=self.ua.token(8)
            )
        except SipParseError as exc:  # e.g. only qop values we do not support
            log.info("%s: cannot answer the challenge: %s", self.call_id, exc)
            return None
        return (challenge.reply_header, str(creds))

    def _set_final(self) -> None:
        self._final = True
        self._progressed()

    def _progressed(self) -> None:
        """A provisional or the final response came: wake hangup() if it waits for one."""
        progress, self._progress = self._progress, None
        if progress is not None:
            progress.set()

    def _on_provisional(self, response: Response) -> None:
        if self.state is CallState.CALLING:
            self.state = CallState.PROCEEDING
        self._provisional = True
        self._progressed()
        match response.status:
            case 100:
                self._emit(Trying())
            case 183 if _sdp_of(response):
                self._emit(EarlyMedia(_sdp_of(response)))
            case _:
                self._emit(Ringing(response.status, response.reason))

    async def _confirm(self, response: Response) -> None:
        assert self._invite is not None
        # §12.1.2 / §13.2.2.4: the 2xx creates the dialog; its ACK carries the INVITE's CSeq.
        response = _with_to_tag(response)
        self.dialog = Dialog.from_uac_response(self._invite, response, self.local_contact(self.caller))
        ack = self.dialog.ack(response, self.ua.new_via(self.transport))
        try:
            await self.ua.send_ack(ack, next_hop(ack, self.transport), self._invite)
        except TransportError as exc:
            log.info("%s: ACK failed: %s", self.call_id, exc)
        self.state = CallState.CONFIRMED
        self._invite = None  # confirmed: no CANCEL, no retry (the UA keeps it while a 2xx may come)
        if self._hangup_requested:  # hung up while the 2xx was on its way: end it now (§15)
            self.state = CallState.TERMINATING
            self._end(487, "Request Terminated", "local")
            with trio.move_on_after(self.ua.grace):
                await self._bye()
            return
        self._emit(Answered(_sdp_of(response)))

    # ------------------------------------------------------------ requests from the far end

    async def on_request(self, request: Request) -> None:
        """An in-dialog request from the far end (routed by the UA on Call-ID and our tag)."""
        if self.dialog is None or not await self.check_in_dialog(request):
            return
        match request.method:
            case "BYE":
                await self._refuse_pending_reoffer()
                await self.answer_in_dialog(request, 200)
                if self.state is not CallState.TERMINATED:
                    self._end(200, "Remote hangup", "remote")
            case "INFO":
                await self.answer_in_dialog(request, 200)
                ct = request.content_type
                self._emit(InfoReceived(request.body, str(ct) if ct is not None else None))
            case "INVITE":
                if self.state is not CallState.CONFIRMED or self._reinvite is not None:
                    await self.answer_in_dialog(request, 491)  # §14.2
                elif sdp := _sdp_of(request):
                    self._reinvite = request
                    self._emit(ReOffer(sdp))
                else:  # an offer-less re-INVITE (session refresh): offer our current SDP
                    await self.answer_in_dialog(
                        request, 200, body=self.local_sdp, content_type="application/sdp"
                    )
            case "OPTIONS":
                await self.answer_in_dialog(request, 200)
            case "ACK":
                pass
            case _:
                await self.answer_in_dialog(request, 501)


def _with_to_tag(response: Response) -> Response:
    """A broken 2xx without To tag is still ACKed, with the tag "none" (§13.2.2.4: every 2xx)."""
    if response.to.tag is not None:
        return response
    return Response(
        response.status, response.reason,
        response.headers.replace("To", str(response.to.with_tag("none"))), response.body,
    )  # fmt: skip


async def end_unwanted_answer_ack(
    ua: SipUA, invite: Request, response: Response, transport: Transport
) -> Dialog | None:
    """RFC 3261 §13.2.2.4: "The UAC core MUST generate an ACK request for each 2xx received from
    the transaction layer", also for a dialog no call continues (a second fork's 2xx, or a 2xx
    after the call gave up). Builds that dialog and sends its ACK (remembered by the UA for the
    2xx's retransmissions); returns the dialog to end with `end_unwanted_answer_bye`, or None if
    it cannot be (no usable Contact, or the ACK could not be sent)."""
    response = _with_to_tag(response)
    user = invite.from_.uri.user if isinstance(invite.from_.uri, SipUri) else None
    contact = ua.contact(SipUri(ua.host, user), transport)
    try:
        dialog = Dialog.from_uac_response(invite, response, contact)
        ack = dialog.ack(response, ua.new_via(transport))
        await ua.send_ack(ack, next_hop(ack, transport), invite)
    except (LocalProtocolError, SipParseError, TransportError) as exc:
        log.info("%s: cannot ACK an unwanted 2xx (To tag %s): %s", invite.call_id, response.to.tag, exc)
        return None
    log.info("%s: a 2xx no call takes (To tag %s): ACKed, sending BYE", invite.call_id, response.to.tag)
    return dialog


async def end_unwanted_answer_bye(ua: SipUA, dialog: Dialog, transport: Transport) -> None:
    """§13.2.2.4: "If the UAC does not want to continue with that dialog, then the UAC MUST
    terminate the dialog by sending a BYE request" (bounded by Timer F)."""
    bye = dialog.create_request("BYE", via=ua.new_via(transport), headers=ua.common_headers())
    try:
        response = await ua.transact(bye, next_hop(bye, transport))
        log.info("%s: BYE of an unwanted 2xx answered %d", dialog.call_id, response.status)
    except (TransactionTimeout, TransportError) as exc:
        log.info("%s: BYE of an unwanted 2xx failed: %s", dialog.call_id, exc or type(exc).__name__)


class IncomingCall(_Call):
    """An initial INVITE offered to the `on_invite` hook. Answer or reject it; `ended` is set by
    the caller's BYE or CANCEL (or our own `hangup()`)."""

    def __init__(self, ua: SipUA, request: Request, source: Address) -> None:
        super().__init__(ua, request.call_id, source.transport)
        self.invite = request
        self.source = source
        self.offer = _sdp_of(request)
        user = request.uri.user if isinstance(request.uri, SipUri) else None
        self.dialog = Dialog.from_uas_request(
            request, ua.token(6), self.local_contact(user), local_seq=ua.initial_cseq()
        )
        self.answered = False
        self.ended = trio.Event()

    @property
    def user(self) -> str | None:
        """The user part of the Request-URI (the number dialled)."""
        return self.invite.uri.user if isinstance(self.invite.uri, SipUri) else None

    async def answer(self, sdp: bytes) -> None:
        """200 OK with our SDP (retransmitted until the ACK, §13.3.1.4)."""
        self.answered = True
        await self.answer_in_dialog(self.invite, 200, body=sdp, content_type="application/sdp")

    async def reject(self, status: int) -> None:
        """A final error response (the server transaction retransmits it until the ACK)."""
        self.ended.set()
        await self.answer_in_dialog(self.invite, status)

    async def hangup(self) -> None:
        """Send BYE (UAS side, §15.1.1)."""
        if self.ended.is_set():
            return
        self.ended.set()
        try:
            await self.send_in_dialog("BYE")
        except (TransactionTimeout, TransportError, LocalProtocolError) as exc:
            log.info("%s: BYE failed: %s", self.call_id, exc or type(exc).__name__)

    async def on_cancel(self, request: Request) -> None:
        """§9.2: 200 to the CANCEL, then 487 to the INVITE if it is still pending."""
        await self.ua.respond(request, 200)
        if not self.answered and not self.ended.is_set():
            await self.reject(487)

    async def on_request(self, request: Request) -> None:
        """An in-dialog request from the caller."""
        if not await self.check_in_dialog(request):
            return
        match request.method:
            case "BYE":
                await self.answer_in_dialog(request, 200)
                self.ended.set()
            case "OPTIONS":
                await self.answer_in_dialog(request, 200)
            case "INVITE":
                await self.answer_in_dialog(request, 488)  # the echo keeps its one session
            case "ACK":
                pass
            case _:
                await self.answer_in_dialog(request, 501)
