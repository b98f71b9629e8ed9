"""The bridge's SIP user agent on Trio: outgoing calls, the embedded registrar, OPTIONS, a UAS hook.

Theory of operation:

* One `SipUA` owns one `SipTransport` and runs, in its own nursery (`run()`), the dispatcher (the
  only reader of `transport.inbound`), the transaction timer task, a sweeper for remembered ACKs,
  the 2xx retransmitters, and the handlers of incoming INVITEs when a UAS hook is installed (the
  echo extension).
* Transactions are the core's (`sip.layer.TransactionLayer`, RFC 3261 §17 with RFC 6026): every
  received message goes through `layer.receive()`, every action it returns is performed here
  (`Send` -> the transport; a send failure is fed back with `transport_error()`), and one timer
  task sleeps until `layer.next_deadline()` and calls `handle_timeout(trio.current_time())`.
  A client transaction is awaited by the task that started it (`transact()`), which receives
  its `ResponseReceived` / `Timeout` / `TransportFailed` actions over a channel.
* An ICMP error from the transport (`Unreachable(dest)`, RFC 3261 §18.4) fails every client
  transaction to that UDP destination that has had no response yet, as a transport error (the
  caller sees TransportError: 503, §8.1.3.1) instead of waiting out Timer B/F.
* The TU duties the layer leaves to us: ACK for a 2xx (sent directly and remembered for 64*T1 by
  INVITE branch and To tag, so that a retransmitted 2xx, arriving as a stray response, is ACKed
  again, §13.2.2.4), and the retransmission of our own 2xx to an INVITE until its ACK arrives
  (§13.3.1.4, Timer G pacing).
* A 2xx no call takes (§13.2.2.4: "MUST generate an ACK request for each 2xx", and a dialog the
  UAC does not want MUST be ended with BYE): a 2xx from a second fork after the call was answered
  (another To tag), or one arriving after the call gave up waiting (its context left before any
  1xx, so no CANCEL could be sent). The INVITEs we sent are remembered for 128*T1 (Timer B, then
  RFC 6026's Timer M), and such a 2xx gets its own dialog, its ACK at once (remembered as above),
  then a BYE in the UA's nursery (`sip.calls.end_unwanted_answer`).
* RFC 3263 §4.3 failover, across calls: a first hop found through DNS (SRV targets, several A
  records) that failed a transaction without any answer (Timer B/F, an ICMP error, a refused
  connection) is passed over by `locate()` for HOP_DOWN_SECONDS while another target remains, so
  a dead primary costs one call, not every call. Within one call there is no retry on the next
  target (that needs `sip.calls` to resend the INVITE with a new branch).
* Calls: `SipUA.call()` is an async context manager yielding an `OutgoingCall`, whose `events`
  channel carries `CallEvent`s. Leaving the context without `hangup()` sends CANCEL or BYE under
  a bounded shielded `move_on_after(grace)`; the call's response reader is shielded until then,
  so a context left by cancellation still reads the 487 (or the 200 to BYE) and ends at once.
  When the UA itself stops (`run()` cancelled: the bridge's grace period is over), the hang-ups
  still waiting are cut at once: without the dispatcher and the timers they could only wait out
  their `grace` (a far end that never answers the BYE held the bridge's exit for 4 s more).
  In-dialog requests from the far end (BYE, INFO, re-INVITE) are routed by Call-ID and our tag
  to the call. Upstream mode: with `outbound_proxy` (per UA or per call) every INVITE goes to
  that proxy as a preloaded loose Route (§8.1.2); a call the proxy never challenges is logged
  once as a configuration warning.
* REGISTER (when a `Registrar` and an `ha1_lookup` are given): digest challenge with a stateless
  HMAC nonce (sip.registrar.make_nonce), credentials checked against the HA1 the bridge looks up;
  nothing is ever proxied. Guessing is throttled by an `AuthGuard` (`sip.throttle`; default
  `DigestThrottle`): a locked-out source IP or user gets 403 without any digest check, every
  failed check is reported to the guard, and each lock-out is logged once. The source IP is the
  datagram's or connection's, never a Via parameter the sender wrote. OPTIONS -> 200. Initial
  INVITEs -> 403 unless an `on_invite` hook accepts them (only the echo extension installs one:
  the bridge is not an open relay).
* One message never stops the UA (STYLE.md 2.2): any exception (a bug, a hook or callback that
  raises) while one received message is handled is caught in `_dispatch`, logged with the
  message's summary (the first ten with a traceback, then one line per hundred, so one bug hit
  by a flood cannot flood the log), counted (`stats["handler_errors"]`), and a request gets 500
  if its server transaction can still answer; the next message is served. Cancellation (a
  BaseException) is never caught. The same holds for the UA's own tasks, per event: an exception
  while due timers are handled (`_timer_loop`), while an ICMP error fails its transactions
  (`_unreachable_loop`), or in a 2xx retransmitter or the BYE of an unwanted answer is logged
  (same rate limit), counted (`stats["task_errors"]`), and the task goes on (the timer task
  backs off a little while the same deadline keeps failing, so a bug cannot spin the CPU).

Randomness (tags, branches, Call-IDs, cnonces, the nonce key) comes from `token`, injectable.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Self

import trio
from sip.auth import make_challenge, parse_credentials, verify
from sip.calls import (
    ALLOW,
    IncomingCall,
    OutgoingCall,
    TransactionTimeout,
    end_unwanted_answer_ack,
    end_unwanted_answer_bye,
    uri_address,
)
from sip.errors import LocalProtocolError, SipParseError
from sip.headers import NameAddr, Via
from sip.layer import LayerAction, RequestReceived, StrayResponse, TransactionLayer, server_key
from sip.message import Request, Response, make_response
from sip.registrar import ContactSpec, NonceCheck, Registrar, RegistrarError, check_nonce, make_nonce
from sip.resolver import SipResolver, is_ip_literal
from sip.throttle import AuthGuard, DigestThrottle
from sip.timers import TimerConfig
from sip.transaction import (
    AckReceived,
    ResponseReceived,
    Send,
    Terminated,
    Timeout,
    TransactionKey,
    TransportFailed,
)
from sip.transport import Address, Inbound, SipTransport, Transport, TransportError, Unreachable
from sip.uri import Params, SipUri, Uri, parse_sip_uri

__all__ = ["SipUA"]

log = logging.getLogger("sip.ua")

T1 = 0.5  # RFC 3261 §17.1.1.1 RTT estimate
T2 = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
HANDLER_ERROR_TRACEBACKS = 10  # handler errors logged with a traceback; then every 100th, one line
HOP_DOWN_SECONDS = 32.0  # a located hop that failed unanswered is passed over for this long (64*T1)
TIMER_ERROR_BACKOFF = (0.01, 1.0)  # the timer task's pause after a failure: doubling, up to (s)


_TxEvent = Response | Timeout | TransportFailed


# --------------------------------------------------------------------------- the UA


def _summary(message: Request | Response) -> str:
    """One line naming a message for a log record (no body, no credentials)."""
    try:
        if isinstance(message, Request):
            return f"{message.method} {message.uri} (Call-ID {message.call_id}, CSeq {message.cseq.seq})"
        return f"{message.status} to {message.cseq.method} (Call-ID {message.call_id})"
    except Exception:  # a header the accessors refuse: say what can be said
        return f"a {type(message).__name__}"


def _same_udp_address(a: Address, b: Address) -> bool:
    """Both UDP, same port, same IP (spelled alike or not: `::ffff:127.0.0.1`, `::1`)."""
    if a.transport is not Transport.UDP or b.transport is not Transport.UDP or a.port != b.port:
        return False
    try:
        ip_a, ip_b = ipaddress.ip_address(a.host.strip("[]")), ipaddress.ip_address(b.host.strip("[]"))
    except ValueError:
        return a.host == b.host
    if isinstance(ip_a, ipaddress.IPv6Address) and ip_a.ipv4_mapped is not None:
        ip_a = ip_a.ipv4_mapped
    if isinstance(ip_b, ipaddress.IPv6Address) and ip_b.ipv4_mapped is not None:
        ip_b = ip_b.ipv4_mapped
    return ip_a == ip_b


class SipUA:
    """The SIP user agent; see the module docstring.

    `ha1_lookup(user, realm, algorithm)` returns the hex HA1 of an extension (RFC 7616 §3.4.2)
    or None for an unknown user. `on_invite(call)` handles accepted initial INVITEs (the echo
    extension); without it every initial INVITE is refused with 403. `auth_guard` throttles
    REGISTER digest guessing (default: a `DigestThrottle` of its own; pass the bridge's MCCP
    `Authenticator` to share its lock-outs).
    """

    def __init__(
        self,
        transport: SipTransport,
        *,
        local_host: str | None = None,
        public_host: str | None = None,
        user_agent: str = "mccp-bridge",
        registrar: Registrar | None = None,
        ha1_lookup: Callable[[str, str, str], str | None] | None = None,
        realm: str = "mccp-bridge",
        challenge_algorithms: Sequence[str] = ("MD5",),
        on_invite: Callable[[IncomingCall], Awaitable[None]] | None = None,
        token: Callable[[int], str] = secrets.token_hex,
        t1: float = T1,
        t2: float = T2,
        grace: float = 4.0,
        outbound_proxy: tuple[str, int, str] | None = None,
        resolver: SipResolver | None = None,
        auth_guard: AuthGuard | None = None,
    ) -> None:
        self.transport = transport
        self.auth_guard: AuthGuard = auth_guard if auth_guard is not None else DigestThrottle()
        self.outbound_proxy = outbound_proxy
        self._resolver = resolver
        self.host = public_host or local_host or transport.public_host
        self.user_agent = user_agent
        self.registrar = registrar
        self.ha1_lookup = ha1_lookup
        self.realm = realm
        self.challenge_algorithms = tuple(a.upper() for a in challenge_algorithms)
        self.on_invite = on_invite
        self.token = token
        self.t1, self.t2, self.grace = t1, t2, grace
        self._nonce_key = bytes.fromhex(token(32))
        self._layer = TransactionLayer(TimerConfig(t1=t1, t2=t2))
        self._waiters: dict[TransactionKey, trio.MemorySendChannel[_TxEvent]] = {}
        self._unanswered: dict[TransactionKey, Address] = {}  # UDP client txs without a response
        self._wakeup = trio.Event()
        # (INVITE branch, To tag) -> the ACK to resend for a retransmitted 2xx, until it expires
        self._acks: dict[tuple[str, str], tuple[bytes, Address, float]] = {}
        # INVITE branch -> the INVITE we sent, its transport, until when a 2xx may still come
        self._invites: dict[str, tuple[Request, Transport, float]] = {}
        self._awaiting_ack: dict[tuple[str, int], trio.Event] = {}
        self._dialogs: dict[str, OutgoingCall | IncomingCall] = {}
        self._hangups: set[trio.CancelScope] = set()  # the shielded hang-ups of calls being left
        self._down: dict[Address, float] = {}  # hops that failed without an answer -> avoided until
        self._nursery: trio.Nursery | None = None
        self._warned_unchallenged = False
        self._packet_source: Address | None = None  # where the message being dispatched came from
        self.stats: dict[str, int] = {
            "stray_responses": 0, "bad_requests": 0, "retransmissions": 0, "unwanted_2xx": 0,
            "handler_errors": 0, "register_locked_out": 0, "register_lockouts": 0, "task_errors": 0,
        }  # fmt: skip

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[Self] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the UA's tasks (the transport must be running); reports `self` when ready."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sweeper)
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._unreachable_loop)
            task_status.started(self)
            try:
                async for inbound in self.transport.inbound:
                    await self._dispatch(inbound)
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()
                # Hang-ups still waiting cannot finish now (no timers, no dispatcher): their
                # shields would hold the bridge's stop for `grace` more. End them at once.
                for scope in list(self._hangups):
                    scope.cancel()

    def call(
        self,
        target: str,
        *,
        caller: str,
        display: str | None = None,
        sdp: bytes,
        credentials: tuple[str, str] | None = None,
        outbound_proxy: tuple[str, int, str] | None = None,
        nursery: trio.Nursery | None = None,
    ) -> AbstractAsyncContextManager[OutgoingCall]:
        """Place a call to `target` (a SIP URI) as `caller` (the user part); see OutgoingCall.

        `outbound_proxy` is `(host, port, "udp" | "tcp")`; `credentials` `(user, password)` answer
        one 401/407. The task reading the call's responses runs in `nursery` when given (the
        caller's own: one nursery less per call), else in one opened here. Raises SipParseError
        for a target that is not a SIP URI (on entering the context).
        """
        make = functools.partial(
            self._new_call, target, caller=caller, display=display, sdp=sdp,
            credentials=credentials, outbound_proxy=outbound_proxy,
        )  # fmt: skip
        if nursery is None:
            return self._call_in_own_nursery(make)
        return _PlacedCall(self, nursery, make)

    @asynccontextmanager
    async def _call_in_own_nursery(self, make: Callable[[], OutgoingCall]) -> AsyncIterator[OutgoingCall]:
        async with trio.open_nursery() as own:
            try:
                async with _PlacedCall(self, own, make) as call:
                    yield call
            finally:
                own.cancel_scope.cancel()

    def _new_call(
        self,
        target: str,
        *,
        caller: str,
        display: str | None,
        sdp: bytes,
        credentials: tuple[str, str] | None,
        outbound_proxy: tuple[str, int, str] | None,
    ) -> OutgoingCall:
        uri = parse_sip_uri(target)
        preloaded: list[NameAddr] = []
        outbound_proxy = outbound_proxy or self.outbound_proxy
        hop = uri
        if outbound_proxy is not None:
            host, port, transport_name = outbound_proxy
            # §8.1.2: the outbound proxy as a preloaded loose Route.
            params = Params((("lr", None),))
            if transport_name.lower() != "udp":
                params = params.set("transport", transport_name.lower())
            hop = SipUri(f"[{host}]" if ":" in host else host, None, port, params)
            preloaded = [NameAddr(hop)]
        return OutgoingCall(
            self, uri, caller=caller, display=display, sdp=sdp, credentials=credentials,
            hop=hop, preloaded_route=preloaded, from_host=uri.host,
        )  # fmt: skip

    async def _leave_call(self, call: OutgoingCall, reader: trio.CancelScope) -> None:
        """Hang up a call still going (bounded by `grace`, shielded), then stop its reader."""
        if call.ended is None:
            with trio.move_on_after(self.grace, shield=True) as scope:
                self._hangups.add(scope)
                if self._nursery is None:  # the UA has stopped: nothing can be sent
                    scope.cancel()
                try:
                    await call.hangup()
                finally:
                    self._hangups.discard(scope)
            if scope.cancelled_caught:
                call._end(408, "Request Timeout", "timeout")
        reader.cancel()

    def note_upstream_challenge(self, call: OutgoingCall, challenged: bool) -> None:
        if (
            call.preloaded_route
            and call.credentials is not None
            and not challenged
            and not self._warned_unchallenged
        ):
            self._warned_unchallenged = True
            log.warning(
                "configuration: the upstream proxy %s answered a call without any digest challenge; "
                "check that it authenticates the bridge",
                call.first_hop,
            )

    # ------------------------------------------------------------ building blocks

    async def locate(self, uri: SipUri, default: Transport) -> Address:
        """The first hop for `uri`: as is for an IP literal, else RFC 3263 SRV / A (TransportError)."""
        if is_ip_literal(uri.params.get("maddr") or uri.host_no_brackets):
            return uri_address(uri, default)
        if self._resolver is None:
            self._resolver = SipResolver()
        found = await self._resolver.locate(uri, default)
        now = trio.current_time()
        usable = [address for address in found if self._down.get(address, -math.inf) <= now]
        if usable and usable[0] != found[0]:
            log.info("%s: %s did not answer lately; trying %s (RFC 3263 §4.3)", uri, found[0], usable[0])
        return (usable or found)[0]

    def _note_down(self, dest: Address) -> None:
        """`dest` failed a transaction without any answer (timeout, ICMP, connection refused)."""
        self._down[dest] = trio.current_time() + HOP_DOWN_SECONDS

    def new_via(self, transport: Transport) -> Via:
        """A Via for a new client transaction: our sent-by, a fresh branch, rport (RFC 3581)."""
        via_host = f"[{self.host}]" if ":" in self.host else self.host
        params = Params((("branch", "z9hG4bK" + self.token(8)), ("rport", None)))
        return Via(transport.value, via_host, self.transport.port_for(transport), params)

    def contact(self, local_uri: Uri, transport: Transport) -> NameAddr:
        """Our Contact for a dialog (§8.1.1.8): user@our address, transport=tcp when needed."""
        user = local_uri.user if isinstance(local_uri, SipUri) else None
        params = Params((("transport", transport.value.lower()),)) if transport.reliable else Params()
        host = f"[{self.host}]" if ":" in self.host else self.host
        return NameAddr(SipUri(host, user, self.transport.port_for(transport), params))

    def common_headers(self) -> list[tuple[str, str]]:
        return [("User-Agent", self.user_agent)]

    def initial_cseq(self) -> int:
        return int(self.token(2), 16) + 1

    # ------------------------------------------------------------ client transactions

    async def transact(
        self,
        request: Request,
        dest: Address,
        on_provisional: Callable[[Response], None] | None = None,
    ) -> Response:
        """Run a client transaction (§17.1) through the layer and return its final response.

        Provisional responses go to `on_provisional`. Raises `TransactionTimeout` (Timer B/F)
        or TransportError. The layer itself ACKs a non-2xx final response (§17.1.1.3).
        """
        reliable = dest.transport.reliable
        now = trio.current_time()
        key, actions = self._layer.send_request(request, dest, now, reliable)
        if request.method == "INVITE":  # a 2xx may come as long as Timer B, then Timer M, run
            self._invites[request.top_via.branch or ""] = (request, dest.transport, now + 128 * self.t1)
        send, receive = trio.open_memory_channel[_TxEvent](32)
        self._waiters[key] = send
        if not reliable:
            self._unanswered[key] = dest
        try:
            await self._perform(actions)
            while True:
                event = await receive.receive()
                self._unanswered.pop(key, None)  # the destination answered: it is reachable
                match event:
                    case Response(status=status) if status < 200:
                        self._down.pop(dest, None)
                        if on_provisional is not None:
                            on_provisional(event)
                    case Response():
                        self._down.pop(dest, None)
                        return event
                    case Timeout():
                        self._note_down(dest)
                        raise TransactionTimeout(f"no final response to {request.method} from {dest}")
                    case TransportFailed():
                        self._note_down(dest)
                        raise TransportError(f"cannot send {request.method} to {dest}")
        finally:
            del self._waiters[key]
            self._unanswered.pop(key, None)

    async def send_ack(self, ack: Request, dest: Address, invite: Request) -> None:
        """Send an ACK and remember it to answer retransmitted finals of `invite` for 64*T1."""
        data = bytes(ack)
        key = (invite.top_via.branch or "", ack.to.tag or "")
        self._acks[key] = (data, dest, trio.current_time() + 64 * self.t1)
        await self.transport.send(data, dest)

    # ------------------------------------------------------------ server side

    async def send_response(self, request: Request, response: Response) -> bool:
        """Send a TU response on `request`'s server transaction (§17.2); False if it is gone."""
        try:
            actions = self._layer.respond(server_key(request), response, trio.current_time())
        except LocalProtocolError as exc:  # e.g. the transaction timed out meanwhile
            log.info("cannot answer %s %s with %d: %s", request.method, request.call_id, response.status, exc)
            return False
        await self._perform(actions)
        return True

    async def respond(
        self,
        request: Request,
        status: int,
        reason: str | None = None,
        *,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Answer an out-of-dialog request (a random To tag unless it has one, §8.2.6.2)."""
        to_tag = self.token(6) if status > 100 and request.to.tag is None else None
        response = make_response(
            request, status, reason, to_tag=to_tag, headers=[*self.common_headers(), *headers]
        )
        await self.send_response(request, response)

    async def send_invite_final(self, request: Request, response: Response) -> None:
        """A final response to an INVITE. A 2xx is retransmitted by us until its ACK (§13.3.1.4);
        a non-2xx by the INVITE server transaction (Timer G, §17.2.1)."""
        if not await self.send_response(request, response):
            return
        if not 200 <= response.status < 300 or self._nursery is None:
            return
        acked = trio.Event()
        key = (request.call_id, request.cseq.seq)
        self._awaiting_ack[key] = acked
        retransmit = functools.partial(self._retransmit_2xx, server_key(request), key, acked, response)
        self._nursery.start_soon(self._guarded, f"the 2xx retransmission of {_summary(request)}", retransmit)

    async def _retransmit_2xx(
        self, tx: TransactionKey, key: tuple[str, int], acked: trio.Event, response: Response
    ) -> None:
        interval = self.t1
        try:
            with trio.move_on_after(64 * self.t1):  # as Timer H: give up after 64*T1
                while True:
                    with trio.move_on_after(interval):
                        await acked.wait()
                        return
                    try:
                        actions = self._layer.respond(tx, response, trio.current_time())
                    except LocalProtocolError:
                        return  # the transaction ended (Timer L)
                    await self._perform(actions)
                    interval = min(interval * 2, self.t2)
        finally:
            if self._awaiting_ack.get(key) is acked:
                del self._awaiting_ack[key]

    async def _sweeper(self) -> None:
        while True:
            await trio.sleep(self.t1 * 8)
            now = trio.current_time()
            for key in [k for k, (_, _, exp) in self._acks.items() if exp <= now]:
                del self._acks[key]
            for branch in [b for b, (_, _, exp) in self._invites.items() if exp <= now]:
                del self._invites[branch]
            for hop in [h for h, until in self._down.items() if until <= now]:
                del self._down[hop]

    async def _unreachable_loop(self) -> None:
        """RFC 3261 §18.4: an ICMP error for a destination fails its unanswered client
        transactions as a transport error (§17.1.1.2 / §17.1.2.2: the transaction terminates and
        the TU is told), so a dead upstream costs one round trip instead of Timer B (64*T1)."""
        async for event in self.transport.unreachable:
            try:
                await self._fail_unreachable(event)
            except Exception:  # a bug: it costs this event only
                self._task_error(f"an ICMP error for {event.dest}")

    async def _fail_unreachable(self, event: Unreachable) -> None:
        keys = [key for key, dest in self._unanswered.items() if _same_udp_address(dest, event.dest)]
        for key in keys:
            log.info("%s %s to %s failed: %s", key.method, key.branch, event.dest, event.reason)
            self._unanswered.pop(key, None)
            await self._perform(self._layer.transport_error(key, trio.current_time()))

    async def _timer_loop(self) -> None:
        """Sleep until the layer's next deadline (or a wake-up), then fire due timers."""
        pause = 0.0  # after a failure: a short, doubling pause before the next attempt
        while True:
            deadline = self._layer.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            now = trio.current_time()
            due = self._layer.next_deadline()
            if due is None or due > now:
                continue
            try:
                await self._perform(self._layer.handle_timeout(now))
            except Exception:  # a bug: it costs these timers only, never the UA
                self._task_error("due transaction timers")
                pause = min(max(pause * 2, TIMER_ERROR_BACKOFF[0]), TIMER_ERROR_BACKOFF[1])
                await trio.sleep(pause)
            else:
                pause = 0.0

    async def _guarded(self, what: str, task: Callable[[], Awaitable[None]]) -> None:
        """Run one of the UA's background tasks; an exception in it ends that task only."""
        try:
            await task()
        except Exception:
            self._task_error(what)

    def _task_error(self, what: str) -> None:
        """Log (rate-limited like `_dispatch`) and count an exception in one of the UA's tasks."""
        self.stats["task_errors"] += 1
        count = self.stats["task_errors"]
        if count <= HANDLER_ERROR_TRACEBACKS:
            log.exception("error while handling %s", what)
        elif count % 100 == 0:
            log.error("%d errors in the UA's tasks; now while handling %s", count, what)

    async def _perform(self, actions: list[LayerAction]) -> None:
        """Carry out the layer's actions; new requests for the TU are handled last, so that an
        automatic 100 Trying goes out before the TU's own answer."""
        requests: list[RequestReceived] = []
        for action in actions:
            match action:
                case Send(key=key, message=message, dest=dest):
                    assert isinstance(dest, Address)
                    try:
                        await self.transport.send(bytes(message), dest)
                    except TransportError as exc:
                        log.info("send failed (%s %s): %s", key.method, key.branch, exc)
                        await self._perform(self._layer.transport_error(key, trio.current_time()))
                case ResponseReceived(key=key, response=response):
                    waiter = self._waiters.get(key)
                    if waiter is not None:
                        with suppress(trio.WouldBlock):
                            waiter.send_nowait(response)
                    else:  # a 2xx retransmitted while the INVITE transaction is Accepted
                        await self._stray(response)
                case Timeout(key=key) | TransportFailed(key=key):
                    waiter = self._waiters.get(key)
                    if waiter is not None:
                        with suppress(trio.WouldBlock):
                            waiter.send_nowait(action)
                case AckReceived(request=ack):
                    event = self._awaiting_ack.get((ack.call_id, ack.cseq.seq))
                    if event is not None:
                        event.set()
                case StrayResponse(response=response):
                    await self._stray(response)
                case RequestReceived():
                    requests.append(action)
                case Terminated():
                    pass
        for received in requests:
            await self._on_request(received)
        self._wakeup.set()  # deadlines may have moved earlier

    async def _stray(self, response: Response) -> None:
        """A response no client transaction waits for: a 2xx to one of our INVITEs is ACKed
        (again, or for the first time and then BYEd, §13.2.2.4); anything else is counted."""
        if response.cseq.method == "INVITE" and 200 <= response.status < 300:
            branch = response.top_via.branch or ""
            # a 2xx without To tag was ACKed with the tag "none" (OutgoingCall._confirm)
            remembered = self._acks.get((branch, response.to.tag or "none"))
            if remembered is not None:
                data, dest, _ = remembered
                await self.transport.send(data, dest)  # a retransmitted 2xx: the same ACK again
                return
            sent = self._invites.get(branch)
            if sent is not None and self._nursery is not None:
                invite, transport, _ = sent
                self.stats["unwanted_2xx"] += 1
                dialog = await end_unwanted_answer_ack(self, invite, response, transport)
                if dialog is not None:
                    bye = functools.partial(end_unwanted_answer_bye, self, dialog, transport)
                    self._nursery.start_soon(self._guarded, f"the BYE after {_summary(response)}", bye)
                return
        self.stats["stray_responses"] += 1

    # ------------------------------------------------------------ dispatch

    async def _dispatch(self, inbound: Inbound) -> None:
        message, source = inbound.message, inbound.source
        self._packet_source = inbound.source
        try:
            if isinstance(message, Request):
                # The server transaction answers where RFC 3261 §18.2.2 / RFC 3581 say.
                source = self.transport.response_address(message, source)
            reliable = source.transport.reliable
            actions = self._layer.receive(message, source, trio.current_time(), reliable)
            await self._perform(actions)
        except SipParseError as exc:  # a header the parser let through and an accessor refused
            self.stats["bad_requests"] += 1
            log.info("dropped a bad message from %s: %s", source, exc)
        except TransportError as exc:  # e.g. re-ACKing a retransmitted 2xx to a vanished peer
            log.info("cannot send while handling a message from %s: %s", source, exc)
        except Exception:  # a bug: it must cost this message only, never the UA (nor the bridge)
            self.stats["handler_errors"] += 1
            count = self.stats["handler_errors"]
            if count <= HANDLER_ERROR_TRACEBACKS:
                log.exception("error while handling %s from %s", _summary(message), inbound.source)
            elif count % 100 == 0:  # a flood of one bug must not flood the log
                log.error(
                    "%d errors while handling messages; now %s from %s",
                    count,
                    _summary(message),
                    inbound.source,
                )
            self._wakeup.set()  # the actions not performed may have moved a deadline
            if isinstance(message, Request) and message.method != "ACK":
                await self._answer_500(message)
        finally:
            self._packet_source = None

    async def _answer_500(self, request: Request) -> None:
        """RFC 3261 §21.5.1: 500 on the request's server transaction, if it can still answer."""
        try:
            await self.respond(request, 500)
        except Exception as exc:  # the request or the layer is what failed: give up quietly
            log.info("no 500 for %s: %s", _summary(request), exc)

    async def _on_request(self, received: RequestReceived) -> None:
        request, source = received.request, received.source
        assert isinstance(source, Address)
        method = request.method
        dialog = self._dialogs.get(request.call_id)
        if method == "CANCEL":
            if received.cancels is not None and isinstance(dialog, IncomingCall):
                await dialog.on_cancel(request)
            else:
                await self.respond(request, 481)  # §9.2: no matching INVITE
            return
        if request.to.tag is not None:
            if dialog is not None and dialog.local_tag == request.to.tag:
                await dialog.on_request(request)
            else:
                await self.respond(request, 481)  # §12.2.2
            return
        match method:
            case "REGISTER":
                await self._on_register(request, source)
            case "OPTIONS":
                await self.respond(request, 200, headers=[("Allow", ALLOW), ("Accept", "application/sdp")])
            case "INVITE":
                await self._on_invite(request, source)
            case "BYE" | "INFO":
                await self.respond(request, 481)
            case _:
                await self.respond(request, 405, headers=[("Allow", ALLOW)])

    async def _on_invite(self, request: Request, source: Address) -> None:
        if self.on_invite is None or self._nursery is None or request.call_id in self._dialogs:
            await self.respond(request, 403)  # not an open relay (nor a second INVITE on a Call-ID)
            return
        call = IncomingCall(self, request, source)
        self._dialogs[call.call_id] = call
        run = functools.partial(self._run_incoming, call)
        self._nursery.start_soon(self._guarded, f"the incoming call {call.call_id}", run)

    async def _run_incoming(self, call: IncomingCall) -> None:
        assert self.on_invite is not None
        try:
            await self.on_invite(call)
            if not call.answered and not call.ended.is_set():
                await call.reject(480)
            elif call.answered and not call.ended.is_set():
                await call.hangup()
        except Exception:
            log.exception("%s: incoming call handler failed", call.call_id)
            if not call.answered:
                await call.reject(500)
            else:
                await call.hangup()
        finally:
            self._dialogs.pop(call.call_id, None)

    # ------------------------------------------------------------ the embedded registrar

    async def _on_register(self, request: Request, source: Address) -> None:
        if self.registrar is None or self.ha1_lookup is None:
            await self.respond(request, 403, "Registration not accepted here")
            return
        now = trio.current_time()
        user = request.to.uri.user if isinstance(request.to.uri, SipUri) else None
        if not user:
            await self.respond(request, 404)
            return
        # Throttle by the IP the message really came from (a Via `received=` is the sender's word).
        source_ip = (self._packet_source or source).host
        if self.auth_guard.is_locked(source=source_ip, extension=user, now=now):
            self.stats["register_locked_out"] += 1  # no digest is checked while locked out
            await self.respond(request, 403)
            return
        value = request.headers.get("Authorization")
        if value is None:
            await self._challenge(request, source, now, stale=False)
            return
        try:
            creds = parse_credentials(value)
        except SipParseError as exc:
            log.info("REGISTER from %s: bad credentials: %s", source, exc)
            await self.respond(request, 400, "Bad Authorization")
            return
        nonce = check_nonce(self._nonce_key, creds.nonce, now)
        if nonce is not NonceCheck.VALID:  # not ours, or too old (RFC 7616 §3.3 stale=true)
            await self._challenge(request, source, now, stale=nonce is NonceCheck.STALE)
            return
        algorithm = creds.algorithm.upper()
        ha1 = None
        if creds.realm == self.realm and creds.username == user and algorithm in self.challenge_algorithms:
            ha1 = self.ha1_lookup(creds.username, self.realm, algorithm)
        if ha1 is None or not verify(creds, "REGISTER", ha1):
            log.info("REGISTER for %s from %s: authentication failed", user, source)
            self.auth_guard.record_failure(source=source_ip, extension=user, now=now)
            if self.auth_guard.is_locked(source=source_ip, extension=user, now=now):
                self.stats["register_lockouts"] += 1  # it was not locked before this check
                log.warning(
                    "REGISTER for %s from %s: too many failed digests, locked out (403 without a check)",
                    user,
                    source_ip,
                )
            await self.respond(request, 403)
            return
        contacts: list[ContactSpec] = []
        if request.contact_is_star:
            contacts.append(ContactSpec("*"))
        for c in request.contacts:
            q = c.params.get("q")
            try:
                qv = float(q) if q is not None else None
            except ValueError:
                qv = -1.0
            contacts.append(ContactSpec(str(c.uri), c.expires, qv))
        try:
            outcome = self.registrar.register(
                user, contacts, call_id=request.call_id, cseq=request.cseq.seq,
                expires_header=request.expires, now=now,
                source=(source.host, source.port, source.transport.value),
            )  # fmt: skip
        except RegistrarError as exc:
            extra = [("Min-Expires", str(exc.min_expires))] if exc.min_expires else []
            await self.respond(request, exc.status, exc.reason, headers=extra)
            return
        headers = [("Contact", f"<{b.contact}>;expires={b.expires_in(now)}") for b in outcome.bindings]
        await self.respond(request, 200, headers=headers)

    async def _challenge(self, request: Request, source: Address, now: float, *, stale: bool) -> None:
        """401 with one challenge per algorithm (RFC 8760 §2.4), a stateless HMAC nonce."""
        nonce = make_nonce(self._nonce_key, now)
        headers = [
            ("WWW-Authenticate", str(make_challenge(self.realm, nonce, algorithm=algorithm, stale=stale)))
            for algorithm in self.challenge_algorithms
        ]
        await self.respond(request, 401, headers=headers)


class _PlacedCall:
    """The context of `SipUA.call`: registers the call, runs its response reader in `nursery`,
    hangs up on leaving. A class rather than an async generator: no generator frame, contextlib
    wrapper nor Trio async-generator record is kept for the call's life (memory per call, issue 6).

    The reader (`call.run`) has its own shielded scope: when the context is left by cancellation
    it must outlive it, or the hang-up would send CANCEL and never see the 487 (nor a 2xx racing
    it, §15). It is cancelled once the bounded hang-up is over, so the shield is bounded by
    `grace` too.
    """

    __slots__ = ("_call", "_make", "_nursery", "_reader", "_ua")

    def __init__(self, ua: SipUA, nursery: trio.Nursery, make: Callable[[], OutgoingCall]) -> None:
        self._ua = ua
        self._nursery = nursery
        self._make: Callable[[], OutgoingCall] | None = make
        self._call: OutgoingCall | None = None
        self._reader = trio.CancelScope(shield=True)

    async def __aenter__(self) -> OutgoingCall:
        assert self._make is not None, "a call context is entered once"
        call, self._make = self._make(), None
        self._ua._dialogs[call.call_id] = call
        self._call = call
        try:
            self._nursery.start_soon(self._run)
        except BaseException:
            self._ua._dialogs.pop(call.call_id, None)
            raise
        return call

    async def _run(self) -> None:
        assert self._call is not None
        with self._reader:
            await self._call.run()

    async def __aexit__(self, *exc_info: object) -> None:
        call = self._call
        assert call is not None
        try:
            await self._ua._leave_call(call, self._reader)
        finally:
            self._ua._dialogs.pop(call.call_id, None)
