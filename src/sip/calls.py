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
  dispatcher by Call-ID: BYE -> 200 + Ended(by="remote"), INFO -> 200 + InfoReceived,
  re-INVITE -> ReOffer, answered by `accept_reoffer()` (491 while one is pending, §14.2).
* `IncomingCall` is what a UAS hook (the echo extension) gets: `answer(sdp)`, `reject(code)`,
  `hangup()`, and `ended` (set by BYE or CANCEL).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal

import trio
from sip.auth import DigestClient, challenges, supported_algorithm
from sip.errors import SipParseError
from sip.headers import Headers, NameAddr
from sip.message import Request, Response, make_request
from sip.transport import Address, Transport, TransportError
from sip.uri import Params, SipUri, Uri

if TYPE_CHECKING:
    from sip.ua import SipUA

__all__ = [
    "ALLOW",
    "Answered",
    "CallEvent",
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
    return Address(host, uri.port or (5061 if uri.scheme == "sips" else 5060), transport)


def _sdp_of(message: Request | Response) -> bytes:
    ct = message.content_type
    return message.body if ct is not None and ct.media_type == "application/sdp" and message.body else b""


# --------------------------------------------------------------------------- dialogs


class _Dialog:
    """The state both call directions share once a dialog exists (RFC 3261 §12)."""

    def __init__(self, ua: SipUA, call_id: str, local: NameAddr, remote: NameAddr, cseq: int) -> None:
        self.ua = ua
        self.call_id = call_id
        self.local = local  # our From/To with our tag
        self.remote = remote  # theirs (tag once known)
        self.local_cseq = cseq
        self.remote_target: Uri | None = None
        self.route_set: list[NameAddr] = []
        self.remote_cseq: int | None = None
        self.transport = ua.transport.default_transport

    def next_hop(self) -> Address:
        """§12.2.1.1 / §8.1.2: the first Route if any, else the remote target."""
        assert self.remote_target is not None
        uri = self.route_set[0].uri if self.route_set else self.remote_target
        return uri_address(uri, self.transport)

    def request(
        self, method: str, *, cseq: int | None = None, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """Build an in-dialog request (§12.2.1.1)."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        assert self.remote_target is not None
        return make_request(
            method,
            self.remote_target,
            call_id=self.call_id,
            cseq=cseq,
            from_=self.local,
            to=self.remote,
            via=self.ua.new_via(self.transport),
            contact=self.ua.contact(self.local.uri, self.transport),
            route=self.route_set,
            headers=self.ua.common_headers(),
            body=body,
            content_type=content_type,
        )

    async def send_request(self, request: Request) -> Response:
        """Send an in-dialog non-INVITE request and wait for its final response."""
        return await self.ua.transact(request, self.next_hop())


class OutgoingCall(_Dialog):
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
        first_hop: Address,
        preloaded_route: list[NameAddr],
        from_host: str,
    ) -> None:
        call_id = f"{ua.token(12)}@{ua.host}"
        local = NameAddr(SipUri(from_host, caller), display, Params((("tag", ua.token(6)),)))
        super().__init__(ua, call_id, local, NameAddr(target), cseq=1)
        self.target = target
        self.offer = sdp
        self.local_sdp = sdp
        self.credentials = credentials
        self.first_hop = first_hop
        self.transport = first_hop.transport
        self.preloaded_route = preloaded_route
        self.state = CallState.CALLING
        self._send_events, self.events = trio.open_memory_channel[CallEvent](256)
        self._provisional = trio.Event()
        self._final = trio.Event()
        self._done = trio.Event()
        self._hangup_requested = False
        self._invite: Request | None = None
        self._invite_dest = first_hop
        self._challenged = False
        self._reinvite: tuple[Request, Address] | None = None
        self.ended: Ended | None = None

    # ------------------------------------------------------------ public API

    async def hangup(self) -> None:
        """End the call: CANCEL before the final response (then expects 487), BYE after."""
        self._hangup_requested = True
        if self.state in (CallState.CALLING, CallState.PROCEEDING):
            # §9.1: a CANCEL SHOULD NOT be sent before a provisional response arrived.
            with trio.move_on_after(64 * self.ua.t1):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_wait_then_cancel, self._provisional, nursery.cancel_scope)
                    nursery.start_soon(_wait_then_cancel, self._final, nursery.cancel_scope)
            if not self._final.is_set() and self._provisional.is_set():
                self.state = CallState.TERMINATING
                await self._send_cancel()
            with trio.move_on_after(64 * self.ua.t1):
                await self._done.wait()
            if not self._done.is_set():  # §9.1: no final within 64*T1 after CANCEL
                self._end(487, "Request Terminated", "local")
        elif self.state is CallState.CONFIRMED:
            self.state = CallState.TERMINATING
            self._end(200, "Hangup", "local")
            try:
                response = await self.send_request(self.request("BYE"))
                log.debug("%s: BYE answered %d", self.call_id, response.status)
            except (TransactionTimeout, TransportError) as exc:
                log.info("%s: BYE not answered: %s", self.call_id, exc or type(exc).__name__)

    async def send_info(self, body: bytes, content_type: str) -> int:
        """Send an in-dialog INFO (e.g. DTMF relay); returns the final status (408 on timeout)."""
        if self.state is not CallState.CONFIRMED:
            raise RuntimeError("INFO needs a confirmed call")
        try:
            response = await self.send_request(self.request("INFO", body=body, content_type=content_type))
        except TransactionTimeout:
            return 408
        except TransportError:
            return 503
        return response.status

    async def accept_reoffer(self, sdp: bytes) -> None:
        """Answer the pending re-INVITE (the last `ReOffer`) with 200 OK and our SDP."""
        if self._reinvite is None:
            raise RuntimeError("no re-INVITE is pending")
        request, source = self._reinvite
        self._reinvite = None
        self.local_sdp = sdp
        await self.ua.respond_invite_final(
            request,
            source,
            200,
            contact=self.ua.contact(self.local.uri, self.transport),
            body=sdp,
            content_type="application/sdp",
        )

    # ------------------------------------------------------------ internals

    def _emit(self, event: CallEvent) -> None:
        try:
            self._send_events.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError):
            log.warning("%s: event dropped: %s", self.call_id, event)

    def _end(self, code: int, reason: str, by: Literal["remote", "local", "timeout"]) -> None:
        if self.ended is None:
            self.ended = Ended(code, reason, by)
            self.state = CallState.TERMINATED
            self._emit(self.ended)
            self._send_events.close()
        self._done.set()

    def _build_invite(self, auth: tuple[str, str] | None) -> Request:
        headers = [*self.ua.common_headers(), ("Allow", ALLOW)]
        if auth is not None:
            headers.append(auth)
        return make_request(
            "INVITE",
            self.target,
            call_id=self.call_id,
            cseq=self.local_cseq,
            from_=self.local,
            to=self.remote,
            via=self.ua.new_via(self.transport),
            contact=self.ua.contact(self.local.uri, self.transport),
            route=self.preloaded_route,
            headers=headers,
            body=self.offer,
            content_type="application/sdp",
        )

    async def run(self) -> None:
        """Place the call: INVITE, one digest retry, ACK on 2xx; emits events; ends on a final failure."""
        auth: tuple[str, str] | None = None
        try:
            while True:
                self._invite = self._build_invite(auth)
                response = await self.ua.transact(self._invite, self._invite_dest, self._on_provisional)
                if response.status in (401, 407) and self.credentials is not None and not self._challenged:
                    if self._hangup_requested:
                        self._end(487, "Request Terminated", "local")
                        return
                    auth = self._answer_challenge(response)
                    if auth is None:
                        self._end(response.status, response.reason, "remote")
                        return
                    self._challenged = True
                    self.local_cseq += 1  # §22.2: a new request with a higher CSeq
                    continue
                break
        except TransactionTimeout:
            self._final.set()
            self._end(408, "Request Timeout", "timeout")
            return
        except TransportError as exc:
            self._final.set()
            log.info("%s: cannot reach %s: %s", self.call_id, self._invite_dest, exc)
            self._end(503, "Service Unavailable", "local")
            return
        self._final.set()
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

    def _on_provisional(self, response: Response) -> None:
        if self.state is CallState.CALLING:
            self.state = CallState.PROCEEDING
        self._provisional.set()
        tag = response.to.tag
        if tag is not None and self.remote.tag is None and response.status > 100:
            self._learn_dialog(response)  # early dialog (§13.2.2.4 / §12.1.2)
        match response.status:
            case 100:
                self._emit(Trying())
            case 183 if _sdp_of(response):
                self._emit(EarlyMedia(_sdp_of(response)))
            case _:
                self._emit(Ringing(response.status, response.reason))

    def _learn_dialog(self, response: Response) -> None:
        """§12.1.2: remote tag, remote target from Contact, route set = reversed Record-Route."""
        tag = response.to.tag
        if tag is not None:
            self.remote = self.remote.with_tag(tag)
        contacts = response.contacts
        if contacts:
            self.remote_target = contacts[0].uri
        self.route_set = list(reversed(response.record_route))

    async def _confirm(self, response: Response) -> None:
        self.remote = NameAddr(self.remote.uri, self.remote.display_name, self.remote.params.remove("tag"))
        self._learn_dialog(response)
        if self.remote_target is None:  # a 2xx without Contact: ACK to the first hop anyway
            self.remote_target = self.target
        assert self._invite is not None
        # §13.2.2.4: the ACK for a 2xx is a new transaction with the INVITE's CSeq number.
        ack = self.request("ACK", cseq=self.local_cseq)
        try:
            await self.ua.send_ack(ack, self.next_hop(), self._invite)
        except TransportError as exc:
            log.info("%s: ACK failed: %s", self.call_id, exc)
        self.state = CallState.CONFIRMED
        if self._hangup_requested:  # hung up while the 2xx was on its way: end it now (§15)
            self.state = CallState.TERMINATING
            self._end(487, "Request Terminated", "local")
            with trio.move_on_after(self.ua.grace):
                with suppress(TransactionTimeout, TransportError):
                    await self.send_request(self.request("BYE"))
            return
        self._emit(Answered(_sdp_of(response)))

    async def _send_cancel(self) -> None:
        """§9.1: CANCEL with the INVITE's Request-URI, Call-ID, From, To, CSeq number, Via and Route."""
        invite = self._invite
        assert invite is not None
        headers = [("Via", invite.headers.get_all("Via")[0]), ("Max-Forwards", "70")]
        headers += [("Route", r) for r in invite.headers.get_all("Route")]
        for name in ("From", "To", "Call-ID"):
            headers.append((name, invite.headers.get(name) or ""))
        headers.append(("CSeq", f"{invite.cseq.seq} CANCEL"))
        headers += self.ua.common_headers()
        cancel = Request("CANCEL", invite.uri, Headers.from_pairs(headers))
        try:
            await self.ua.transact(cancel, self._invite_dest)
        except (TransactionTimeout, TransportError) as exc:
            log.info("%s: CANCEL failed: %s", self.call_id, exc or type(exc).__name__)

    # ------------------------------------------------------------ requests from the far end

    async def on_request(self, request: Request, source: Address) -> None:
        ua = self.ua
        match request.method:
            case "BYE":
                await ua.respond(request, source, 200)
                if self.state is not CallState.TERMINATED:
                    self._end(200, "Remote hangup", "remote")
            case "INFO":
                await ua.respond(request, source, 200)
                ct = request.content_type
                self._emit(InfoReceived(request.body, str(ct) if ct is not None else None))
            case "INVITE":
                if self.state is not CallState.CONFIRMED:
                    await ua.respond(request, source, 491 if self._reinvite else 500)
                elif self._reinvite is not None:
                    await ua.respond(request, source, 491)  # §14.2: one re-INVITE at a time
                else:  # (the layer has sent 100 Trying)
                    if request.contacts:
                        self.remote_target = request.contacts[0].uri  # §12.2.2 target refresh
                    sdp = _sdp_of(request)
                    if sdp:
                        self._reinvite = (request, source)
                        self._emit(ReOffer(sdp))
                    else:  # an offer-less re-INVITE (session refresh): offer our current SDP
                        await ua.respond_invite_final(
                            request, source, 200, contact=ua.contact(self.local.uri, self.transport),
                            body=self.local_sdp, content_type="application/sdp",
                        )  # fmt: skip
            case "OPTIONS":
                await ua.respond(request, source, 200, headers=[("Allow", ALLOW)])
            case "ACK":
                pass  # matched by the UA
            case _:
                await ua.respond(request, source, 501)


async def _wait_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class IncomingCall(_Dialog):
    """An initial INVITE offered to the `on_invite` hook. Answer or reject it; `ended` is set by
    the caller's BYE or CANCEL (or our own `hangup()`)."""

    def __init__(self, ua: SipUA, request: Request, source: Address) -> None:
        local = request.to.with_tag(ua.token(6))
        super().__init__(ua, request.call_id, local, request.from_, cseq=ua.initial_cseq())
        self.invite = request
        self.source = source
        self.offer = _sdp_of(request)
        self.remote_target = request.contacts[0].uri if request.contacts else request.from_.uri
        self.route_set = list(request.record_route)  # §12.1.1: the UAS keeps Record-Route in order
        self.transport = source.transport
        self.remote_cseq = request.cseq.seq
        self.answered = False
        self.ended = trio.Event()

    @property
    def user(self) -> str | None:
        """The user part of the Request-URI (the number dialled)."""
        return self.invite.uri.user if isinstance(self.invite.uri, SipUri) else None

    async def answer(self, sdp: bytes) -> None:
        """200 OK with our SDP (retransmitted until the ACK, §13.3.1.4)."""
        self.answered = True
        await self.ua.respond_invite_final(
            self.invite, self.source, 200, to_tag=self.local.tag,
            contact=self.ua.contact(self.local.uri, self.transport), body=sdp, content_type="application/sdp",
        )  # fmt: skip

    async def reject(self, status: int, reason: str | None = None) -> None:
        """A final error response (retransmitted until the ACK)."""
        self.ended.set()
        await self.ua.respond_invite_final(self.invite, self.source, status, reason, to_tag=self.local.tag)

    async def hangup(self) -> None:
        """Send BYE (UAS side, §15.1.1)."""
        if self.ended.is_set():
            return
        self.ended.set()
        try:
            await self.send_request(self.request("BYE"))
        except (TransactionTimeout, TransportError) as exc:
            log.info("%s: BYE failed: %s", self.call_id, exc or type(exc).__name__)

    async def on_request(self, request: Request, source: Address) -> None:
        match request.method:
            case "BYE":
                await self.ua.respond(request, source, 200)
                self.ended.set()
            case "CANCEL":
                await self.ua.respond(request, source, 200)
                if not self.answered and not self.ended.is_set():
                    # §9.2: the INVITE is then answered 487.
                    await self.reject(487)
            case "ACK":
                pass
            case "OPTIONS":
                await self.ua.respond(request, source, 200, headers=[("Allow", ALLOW)])
            case _:
                await self.ua.respond(request, source, 501 if request.method != "INVITE" else 488)
