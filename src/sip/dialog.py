"""SIP dialogs (RFC 3261 §12-§15), CANCEL construction (§9.1) and the UAS 2xx retransmitter (§13.3.1.4).

Public API:

* `Dialog.from_uac_response(invite, response, local_contact)` — a UAC dialog from a 1xx with a
  To tag (early) or a 2xx (confirmed) to our INVITE (§12.1.2): route set = Record-Route
  reversed, remote target = Contact.
* `Dialog.from_uas_request(invite, local_tag, local_contact, local_seq=1)` — a UAS dialog when
  answering an INVITE (§12.1.1): route set = Record-Route in order; early until
  `response()` builds a 2xx.
* `dialog.id` (`DialogId(call_id, local_tag, remote_tag)`); `request_dialog_id(request)` and
  `response_dialog_id(response)` compute the id a received message belongs to.
* `dialog.create_request(method, via=..., ...)` — an in-dialog request (§12.2.1.1: CSeq
  incremented, Request-URI and Route from the route set, loose or strict routing). Sending
  BYE ends the dialog (§15.1.1).
* `dialog.ack(response, via)` — the ACK for a 2xx to INVITE (§13.2.2.4), same CSeq number as
  the INVITE; a retransmitted 2xx gets the very same ACK back.
* `dialog.receive_response(response)` — update state from a response to one of our requests
  (early -> confirmed, target refresh, 481/408 end the dialog, failure of the initial INVITE ends
  an early dialog).
* `dialog.receive_request(request) -> Response | None` — check an incoming in-dialog request
  (§12.2.2 CSeq order -> 500, re-INVITE glare -> 491 or 500 with Retry-After, §14.2), apply
  target refresh and BYE; None means "the TU should handle it", a Response must be sent as is.
* `dialog.response(request, status, ...)` — a response to an in-dialog request (or to the
  dialog-creating INVITE on the UAS side) with our tag and, for 2xx to INVITE, our Contact.
* `make_cancel(invite)` — CANCEL for a pending INVITE (§9.1).
* `AnswerRetransmitter(response, now, reliable, config)` — resends a UAS 2xx until the ACK
  (`next_deadline`, `handle_timeout(now) -> list[Response | None]`, where None means no ACK came
  within 64*T1 and the dialog should be ended with BYE; `ack_received()`).

Randomness (tags, branches) is injected: callers pass the local tag and a `Via` with a fresh
branch. Nothing here sends anything; the caller hands requests to the transaction layer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from sip.errors import LocalProtocolError
from sip.headers import Headers, NameAddr, Via
from sip.message import Request, Response, make_request, make_response
from sip.timers import Timer, TimerConfig
from sip.uri import SipUri, Uri

_TARGET_REFRESH = frozenset({"INVITE", "UPDATE"})


class DialogState(Enum):
    """§12: a dialog is early (after a 1xx with tag), confirmed (2xx) or terminated."""

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID plus local and remote tags (§12)."""

    call_id: str
    local_tag: str
    remote_tag: str


def request_dialog_id(request: Request) -> DialogId | None:
    """The id of the dialog a received request belongs to (local tag = To tag), or None."""
    to_tag, from_tag = request.to.tag, request.from_.tag
    if to_tag is None or from_tag is None:
        return None
    return DialogId(request.call_id, to_tag, from_tag)


def response_dialog_id(response: Response) -> DialogId | None:
    """The id of the dialog a received response belongs to (local tag = From tag), or None."""
    to_tag, from_tag = response.to.tag, response.from_.tag
    if to_tag is None or from_tag is None:
        return None
    return DialogId(response.call_id, from_tag, to_tag)


def _target(contact: list[NameAddr], fallback: Uri) -> Uri:
    if not contact:
        return fallback
    uri = contact[0].uri
    # §12.1.1/§12.1.2: the remote target is the Contact URI; URI headers are not part of it.
    return uri.without_headers() if isinstance(uri, SipUri) else uri


def make_cancel(invite: Request) -> Request:
    """CANCEL for a pending INVITE (§9.1): same Request-URI, Call-ID, To, From, CSeq number,
    Route and the INVITE's top Via only (so it matches the INVITE's branch)."""
    h = invite.headers
    pairs: list[tuple[str, str]] = [("Via", h.get("Via") or ""), ("Max-Forwards", "70")]
    pairs += [("Route", v) for v in h.get_all("Route")]
    pairs += [("From", h.get("From") or ""), ("To", h.get("To") or ""), ("Call-ID", h.get("Call-ID") or "")]
    pairs.append(("CSeq", f"{invite.cseq.seq} CANCEL"))
    return Request("CANCEL", invite.uri, Headers.from_pairs(pairs))


class Dialog:
    """The state of one dialog, from either side (§12.1)."""

    def __init__(
        self,
        *,
        call_id: str,
        local: NameAddr,
        remote: NameAddr,
        local_seq: int | None,
        remote_seq: int | None,
        remote_target: Uri,
        route_set: list[NameAddr],
        local_contact: NameAddr,
        state: DialogState,
        is_uac: bool,
    ) -> None:
        self.call_id = call_id
        self.local = local  # our From (UAC) / To (UAS) address, with our tag
        self.remote = remote  # their address, with their tag
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.remote_target = remote_target
        self.route_set = route_set
        self.local_contact = local_contact
        self.state = state
        self.is_uac = is_uac
        self._acks: dict[int, Request] = {}
        self._local_invite_pending = False
        self._remote_invite_pending = False

    @property
    def local_tag(self) -> str:
        """Our tag."""
        return self.local.tag or ""

    @property
    def remote_tag(self) -> str:
        """The peer's tag."""
        return self.remote.tag or ""

    @property
    def id(self) -> DialogId:
        """The dialog id (§12)."""
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def from_uac_response(cls, invite: Request, response: Response, local_contact: NameAddr) -> Dialog:
        """A UAC dialog from a 1xx (with To tag) or 2xx answering our `invite` (§12.1.2)."""
        if response.to.tag is None or not 100 < response.status < 300:
            raise LocalProtocolError(f"a {response.status} without To tag does not create a dialog")
        return cls(
            call_id=invite.call_id,
            local=invite.from_,
            remote=response.to,
            local_seq=invite.cseq.seq,
            remote_seq=None,
            remote_target=_target(response.contacts, invite.uri),
            route_set=list(reversed(response.record_route)),
            local_contact=local_contact,
            state=DialogState.CONFIRMED if response.status >= 200 else DialogState.EARLY,
            is_uac=True,
        )

    @classmethod
    def from_uas_request(
        cls, invite: Request, local_tag: str, local_contact: NameAddr, local_seq: int = 1
    ) -> Dialog:
        """A UAS dialog for an INVITE we are answering (§12.1.1); early until a 2xx is built.

        `local_seq` is the CSeq our first request in this dialog will carry (§12.1.1 leaves it
        to us; callers may pass a random value below 2**31).
        """
        dialog = cls(
            call_id=invite.call_id,
            local=invite.to.with_tag(local_tag),
            remote=invite.from_,
            local_seq=local_seq - 1,
            remote_seq=invite.cseq.seq,
            remote_target=_target(invite.contacts, invite.uri),
            route_set=list(invite.record_route),
            local_contact=local_contact,
            state=DialogState.EARLY,
            is_uac=False,
        )
        dialog._remote_invite_pending = True
        return dialog

    def _request_uri_and_route(self) -> tuple[Uri, list[NameAddr]]:
        """§12.2.1.1: loose routing when the first route has `lr`, else strict routing."""
        if not self.route_set:
            return self.remote_target, []
        first = self.route_set[0]
        if isinstance(first.uri, SipUri) and "lr" in first.uri.params:
            return self.remote_target, list(self.route_set)
        uri = first.uri.without_headers() if isinstance(first.uri, SipUri) else first.uri
        return uri, [*self.route_set[1:], NameAddr(self.remote_target)]

    def create_request(
        self,
        method: str,
        *,
        via: Via,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """A request within the dialog (§12.2.1.1). Not for ACK (use `ack`) nor CANCEL
        (use `make_cancel`). A BYE terminates the dialog (§15.1.1)."""
        if method in ("ACK", "CANCEL"):
            raise LocalProtocolError(f"{method} is not built with create_request")
        if self.state is DialogState.TERMINATED:
            raise LocalProtocolError(f"dialog {self.id} is terminated")
        if method == "INVITE":
            if self._local_invite_pending:
                raise LocalProtocolError("a re-INVITE is already pending (§14.1)")
            self._local_invite_pending = True
        self.local_seq = (self.local_seq or 0) + 1
        uri, route = self._request_uri_and_route()
        request = make_request(
            method,
            uri,
            call_id=self.call_id,
            cseq=self.local_seq,
            from_=self.local,
            to=self.remote,
            via=via,
            max_forwards=max_forwards,
            contact=self.local_contact if method in _TARGET_REFRESH else None,
            route=route,
            headers=headers,
            body=body,
            content_type=content_type,
        )
        if method == "BYE":
            self.state = DialogState.TERMINATED
        return request

    def ack(
        self,
        response: Response,
        via: Via,
        body: bytes = b"",
        content_type: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """The ACK for a 2xx to INVITE (§13.2.2.4): CSeq number of the INVITE, method ACK.

        `headers` should carry the INVITE's Authorization/Proxy-Authorization, which §13.2.2.4
        says the ACK repeats. The ACK is remembered per CSeq number: a retransmitted 2xx gets
        the same ACK (same branch), so the arguments only matter the first time.
        """
        seq = response.cseq.seq
        cached = self._acks.get(seq)
        if cached is not None:
            return cached
        uri, route = self._request_uri_and_route()
        ack = make_request(
            "ACK",
            uri,
            call_id=self.call_id,
            cseq=seq,
            from_=self.local,
            to=self.remote,
            via=via,
            route=route,
            headers=headers,
            body=body,
            content_type=content_type,
        )
        self._acks[seq] = ack
        return ack

    def receive_response(self, response: Response) -> None:
        """Update the dialog from a response to a request we sent in it (or the initial INVITE)."""
        status, method = response.status, response.cseq.method
        tag = response.to.tag
        if tag is not None and tag != self.remote_tag:
            # A forked answer from another UAS is another dialog (§12.1.2): look up by id first.
            raise LocalProtocolError(f"response with To tag {tag!r} belongs to another dialog than {self.id}")
        if self.state is DialogState.TERMINATED:
            return
        if method == "INVITE":
            if status >= 200:
                self._local_invite_pending = False
            if 100 < status < 300 and response.contacts:
                self.remote_target = _target(response.contacts, self.remote_target)  # target refresh
            if 200 <= status < 300 and self.state is DialogState.EARLY:
                # §13.2.2.4: the 2xx confirms the dialog; its Record-Route gives the route set.
                self.state = DialogState.CONFIRMED
                self.remote = response.to
                self.route_set = list(reversed(response.record_route))
                return
            if status >= 300 and self.state is DialogState.EARLY:
                self.state = DialogState.TERMINATED  # §12.3: the initial INVITE failed
                return
        if status in (481, 408):
            # §12.2.1.2: the dialog (or the peer) is gone.
            self.state = DialogState.TERMINATED

    def receive_request(self, request: Request, retry_after: int = 5) -> Response | None:
        """Check and apply a request received in this dialog (§12.2.2).

        Returns a response to send at once (500 for an out-of-order CSeq, 491 for a re-INVITE
        while ours is pending, 500 with Retry-After while the previous one is unanswered, §14.2),
        or None when the TU should handle the request (and answer via `response`).
        """
        seq, method = request.cseq.seq, request.method
        if method not in ("ACK", "CANCEL"):
            if self.remote_seq is not None and seq < self.remote_seq:
                return self.response(request, 500, "CSeq out of order")
            self.remote_seq = seq
        match method:
            case "INVITE":
                if self._local_invite_pending:
                    return self.response(request, 491)
                if self._remote_invite_pending:
                    return self.response(request, 500, headers=[("Retry-After", str(retry_after))])
                self._remote_invite_pending = True
            case "BYE":
                self.state = DialogState.TERMINATED
            case _:
                pass
        if method in _TARGET_REFRESH and request.contacts:
            self.remote_target = _target(request.contacts, self.remote_target)
        return None

    def response(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Response:
        """A response to `request` carrying our tag; 101-299 to INVITE/UPDATE carry our Contact.

        A final response to INVITE ends the pending re-INVITE; a 2xx confirms an early UAS
        dialog, a failure of the initial INVITE terminates it.
        """
        contact = self.local_contact if request.method in _TARGET_REFRESH and 100 < status < 300 else None
        response = make_response(
            request,
            status,
            reason,
            to_tag=self.local_tag,
            contact=contact,
            headers=headers,
            body=body,
            content_type=content_type,
        )
        if request.method == "INVITE" and status >= 200 and request.cseq.seq == self.remote_seq:
            self._remote_invite_pending = False
            if self.state is DialogState.EARLY:
                self.state = DialogState.CONFIRMED if status < 300 else DialogState.TERMINATED
        return response


class AnswerRetransmitter:
    """Resends a UAS 2xx to INVITE until its ACK arrives (§13.3.1.4).

    Over UDP the 2xx is resent after T1, doubling up to T2; over any transport the ACK must come
    within 64*T1, else `handle_timeout` yields None once: end the dialog with BYE.
    """

    def __init__(
        self, response: Response, now: float, reliable: bool, config: TimerConfig | None = None
    ) -> None:
        self.response = response
        self._config = config or TimerConfig()
        self._interval = self._config.t1
        self._resend_at: float | None = None if reliable else now + self._interval
        self._give_up_at: float | None = now + self._config.initial(Timer.H, reliable)
        self.acked = False

    def next_deadline(self) -> float | None:
        """When to call `handle_timeout`, or None when done."""
        times = [t for t in (self._resend_at, self._give_up_at) if t is not None]
        return min(times, default=None)

    def handle_timeout(self, now: float) -> list[Response | None]:
        """The 2xx copies to resend now, then None if the ACK never came."""
        out: list[Response | None] = []
        while (
            self._resend_at is not None
            and self._resend_at <= now
            and (self._give_up_at is None or self._resend_at < self._give_up_at)
        ):
            out.append(self.response)
            self._interval = min(2 * self._interval, self._config.t2)
            self._resend_at += self._interval
        if self._give_up_at is not None and self._give_up_at <= now:
            self._resend_at = self._give_up_at = None
            out.append(None)
        return out

    def ack_received(self) -> None:
        """The ACK arrived: stop."""
        self.acked = True
        self._resend_at = self._give_up_at = None
