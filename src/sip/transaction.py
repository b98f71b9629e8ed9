"""The four RFC 3261 §17 transaction state machines, sans-IO (with RFC 6026 for INVITE 2xx).

Theory of operation
-------------------
A transaction is created with its request, an opaque `dest` (where its messages go: the edge
decides what it is, e.g. `(host, port, transport)`), whether the transport is reliable, and a
`TimerConfig`. Inputs are method calls with `now` (seconds, any monotonic origin); outputs are
lists of actions:

* `Send(key, message, dest)` — put this message on the wire (the edge serializes it);
* `ResponseReceived(key, response)` — a response for the TU (client transactions);
* `AckReceived(key, request)` — an ACK for a 2xx reached an Accepted INVITE server transaction;
* `Timeout(key, timer)` — Timer B, F or H fired: the transaction failed (the TU acts as on 408);
* `TransportFailed(key)` — the edge reported a send failure (§17.1.1.2, §17.2.4);
* `Terminated(key)` — the transaction is over; the layer forgets it.

Timers are inputs too: `next_deadline()` is the earliest time `handle_timeout(now)` must be
called. Retransmit timers are rescheduled from their due time (not from `now`), so a late call
replays the schedule exactly. Timers of zero duration on reliable transports (D, I, J, K) are
not scheduled: the machine goes straight to Terminated.

State diagrams (RFC 3261 Figures 5-8, RFC 6026 Figures 3-4):

    INVITE client      Calling -1xx-> Proceeding; Calling|Proceeding -2xx-> Accepted -M-> Terminated
                       Calling|Proceeding -300..699/ACK-> Completed -D-> Terminated
                       Calling -B-> Terminated
    non-INVITE client  Trying -1xx-> Proceeding; Trying|Proceeding -final-> Completed -K-> Terminated
                       Trying|Proceeding -F-> Terminated
    INVITE server      Proceeding -2xx-> Accepted -L-> Terminated
                       Proceeding -300..699-> Completed -ACK-> Confirmed -I-> Terminated
                       Completed -H-> Terminated
    non-INVITE server  Trying -1xx-> Proceeding; Trying|Proceeding -final-> Completed -J-> Terminated

Invariants: a Terminated transaction ignores every input and has no deadline; the TU sees each
response class change once per transaction, except 2xx to INVITE (every retransmission is
delivered so that the dialog can ACK it, §13.2.2.4). Misuse (a response before a final one was
allowed, a second final response) raises `LocalProtocolError`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import assert_never

from sip.errors import LocalProtocolError
from sip.headers import Headers
from sip.message import Request, Response
from sip.timers import Timer, TimerConfig

Destination = Hashable


@dataclass(frozen=True, slots=True)
class TransactionKey:
    """Transaction identity (§17.1.3, §17.2.3): top-Via branch, method (ACK matches INVITE),
    role, and for servers the top-Via sent-by."""

    branch: str
    method: str
    server: bool
    sent_by: tuple[str, int | None] | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """Send `message` to `dest`."""

    key: TransactionKey
    message: Request | Response
    dest: Destination


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response the TU must see (client transactions)."""

    key: TransactionKey
    response: Response


@dataclass(frozen=True, slots=True)
class AckReceived:
    """An ACK the TU must see (for a 2xx, RFC 6026 §7.1; or one with no transaction)."""

    key: TransactionKey | None
    request: Request


@dataclass(frozen=True, slots=True)
class Timeout:
    """Timer B, F or H fired: no (final) response or no ACK in time."""

    key: TransactionKey
    timer: Timer


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """A send of this transaction failed; the transaction is terminated."""

    key: TransactionKey


@dataclass(frozen=True, slots=True)
class Terminated:
    """The transaction reached the Terminated state."""

    key: TransactionKey


TxAction = Send | ResponseReceived | AckReceived | Timeout | TransportFailed | Terminated


class InviteClientState(Enum):
    """States of the INVITE client transaction (§17.1.1, RFC 6026 §7.2)."""

    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class NonInviteClientState(Enum):
    """States of the non-INVITE client transaction (§17.1.2)."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class InviteServerState(Enum):
    """States of the INVITE server transaction (§17.2.1, RFC 6026 §7.1)."""

    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class NonInviteServerState(Enum):
    """States of the non-INVITE server transaction (§17.2.2)."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class _Timers:
    """Deadlines and retransmit intervals of one transaction."""

    __slots__ = ("config", "deadlines", "intervals", "reliable")

    def __init__(self, config: TimerConfig, reliable: bool) -> None:
        self.config = config
        self.reliable = reliable
        self.deadlines: dict[Timer, float] = {}
        self.intervals: dict[Timer, float] = {}

    def start(self, timer: Timer, now: float) -> bool:
        """Schedule `timer`; False when its duration is zero (fire at once, nothing scheduled)."""
        duration = self.config.initial(timer, self.reliable)
        if duration <= 0:
            return False
        self.deadlines[timer] = now + duration
        self.intervals[timer] = duration
        return True

    def restart_backoff(self, timer: Timer, due: float) -> None:
        """Reschedule a retransmit timer with the next interval, counted from when it was due."""
        interval = self.config.next_interval(timer, self.intervals[timer])
        self.intervals[timer] = interval
        self.deadlines[timer] = due + interval

    def stop(self, *timers: Timer) -> None:
        for timer in timers:
            self.deadlines.pop(timer, None)

    def clear(self) -> None:
        self.deadlines.clear()

    def next_deadline(self) -> float | None:
        return min(self.deadlines.values(), default=None)

    def pop_due(self, now: float) -> tuple[Timer, float] | None:
        """The earliest timer due at `now` (removed), or None."""
        due = [(when, timer.value, timer) for timer, when in self.deadlines.items() if when <= now]
        if not due:
            return None
        when, _, timer = min(due)
        del self.deadlines[timer]
        return timer, when


class _Transaction:
    """What the four machines share: key, request, destination, timers."""

    def __init__(
        self, key: TransactionKey, request: Request, dest: Destination, reliable: bool, config: TimerConfig
    ) -> None:
        self.key = key
        self.request = request
        self.dest = dest
        self.reliable = reliable
        self._timers = _Timers(config, reliable)

    @property
    def terminated(self) -> bool:
        """True once the transaction reached Terminated."""
        raise NotImplementedError

    def next_deadline(self) -> float | None:
        """When `handle_timeout` must next be called, or None (no timer running)."""
        return self._timers.next_deadline()

    def handle_timeout(self, now: float) -> list[TxAction]:
        """Fire every timer due at `now`, in deadline order."""
        out: list[TxAction] = []
        while (fired := self._timers.pop_due(now)) is not None:
            out += self._on_timer(fired[0], fired[1])
        return out

    def transport_error(self, now: float) -> list[TxAction]:
        """The edge failed to send for this transaction (§17.1.1.2, §17.2.4): terminate."""
        if self.terminated:
            return []
        return [TransportFailed(self.key), *self._terminate()]

    def _on_timer(self, timer: Timer, due: float) -> list[TxAction]:
        raise NotImplementedError

    def _terminate(self) -> list[TxAction]:
        raise NotImplementedError

    def _send(self, message: Request | Response) -> Send:
        return Send(self.key, message, self.dest)


def make_ack_for_non_2xx(invite: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a 300-699 answer to `invite` (§17.1.1.3).

    Same Request-URI, Call-ID, From, CSeq number and Route as the INVITE; the top Via only; To
    from the response (with its tag).
    """
    h = invite.headers
    pairs: list[tuple[str, str]] = [("Via", h.get("Via") or "")]
    pairs.append(("Max-Forwards", "70"))
    pairs += [("Route", v) for v in h.get_all("Route")]
    pairs += [("From", h.get("From") or ""), ("To", response.headers.get("To") or "")]
    pairs += [("Call-ID", h.get("Call-ID") or ""), ("CSeq", f"{invite.cseq.seq} ACK")]
    return Request("ACK", invite.uri, Headers.from_pairs(pairs))


class InviteClientTransaction(_Transaction):
    """INVITE client transaction (§17.1.1 with RFC 6026 Accepted state)."""

    def __init__(
        self, key: TransactionKey, request: Request, dest: Destination, reliable: bool, config: TimerConfig
    ) -> None:
        super().__init__(key, request, dest, reliable, config)
        self.state = InviteClientState.CALLING
        self._ack: Request | None = None

    @property
    def terminated(self) -> bool:
        return self.state is InviteClientState.TERMINATED

    def start(self, now: float) -> list[TxAction]:
        """Send the INVITE; start Timer A (unreliable only) and Timer B (§17.1.1.2)."""
        self._timers.start(Timer.A, now)
        self._timers.start(Timer.B, now)
        return [self._send(self.request)]

    def receive(self, response: Response, now: float) -> list[TxAction]:
        """A response whose branch and CSeq method matched this transaction."""
        status = response.status
        match self.state:
            case InviteClientState.CALLING | InviteClientState.PROCEEDING:
                if status < 200:
                    self._timers.stop(Timer.A)
                    self.state = InviteClientState.PROCEEDING
                    return [ResponseReceived(self.key, response)]
                self._timers.stop(Timer.A, Timer.B)
                if status < 300:
                    # RFC 6026 §7.2: Accepted, so that 2xx retransmissions still reach the TU.
                    self.state = InviteClientState.ACCEPTED
                    self._timers.start(Timer.M, now)
                    return [ResponseReceived(self.key, response)]
                # §17.1.1.3: the transaction itself ACKs a non-2xx final response.
                self._ack = make_ack_for_non_2xx(self.request, response)
                out: list[TxAction] = [self._send(self._ack), ResponseReceived(self.key, response)]
                self.state = InviteClientState.COMPLETED
                if not self._timers.start(Timer.D, now):
                    out += self._terminate()
                return out
            case InviteClientState.COMPLETED:
                # A retransmitted final response: ACK it again, do not bother the TU.
                if status >= 300 and self._ack is not None:
                    return [self._send(self._ack)]
                return []
            case InviteClientState.ACCEPTED:
                return [ResponseReceived(self.key, response)] if 200 <= status < 300 else []
            case InviteClientState.TERMINATED:
                return []
            case _:
                assert_never(self.state)

    def _on_timer(self, timer: Timer, due: float) -> list[TxAction]:
        match timer:
            case Timer.A if self.state is InviteClientState.CALLING:
                self._timers.restart_backoff(Timer.A, due)
                return [self._send(self.request)]
            case Timer.B if self.state is InviteClientState.CALLING:
                return [Timeout(self.key, Timer.B), *self._terminate()]
            case Timer.D | Timer.M:
                return self._terminate()
            case _:
                return []

    def _terminate(self) -> list[TxAction]:
        self.state = InviteClientState.TERMINATED
        self._timers.clear()
        return [Terminated(self.key)]


class NonInviteClientTransaction(_Transaction):
    """Non-INVITE client transaction (§17.1.2)."""

    def __init__(
        self, key: TransactionKey, request: Request, dest: Destination, reliable: bool, config: TimerConfig
    ) -> None:
        super().__init__(key, request, dest, reliable, config)
        self.state = NonInviteClientState.TRYING

    @property
    def terminated(self) -> bool:
        return self.state is NonInviteClientState.TERMINATED

    def start(self, now: float) -> list[TxAction]:
        """Send the request; start Timer E (unreliable only) and Timer F (§17.1.2.2)."""
        self._timers.start(Timer.E, now)
        self._timers.start(Timer.F, now)
        return [self._send(self.request)]

    def receive(self, response: Response, now: float) -> list[TxAction]:
        """A response whose branch and CSeq method matched this transaction."""
        match self.state:
            case NonInviteClientState.TRYING | NonInviteClientState.PROCEEDING:
                if response.status < 200:
                    self.state = NonInviteClientState.PROCEEDING
                    return [ResponseReceived(self.key, response)]
                self._timers.stop(Timer.E, Timer.F)
                self.state = NonInviteClientState.COMPLETED
                out: list[TxAction] = [ResponseReceived(self.key, response)]
                if not self._timers.start(Timer.K, now):
                    out += self._terminate()
                return out
            case NonInviteClientState.COMPLETED | NonInviteClientState.TERMINATED:
                return []  # retransmissions are absorbed
            case _:
                assert_never(self.state)

    def _on_timer(self, timer: Timer, due: float) -> list[TxAction]:
        match timer:
            case Timer.E if self.state is NonInviteClientState.TRYING:
                self._timers.restart_backoff(Timer.E, due)
                return [self._send(self.request)]
            case Timer.E if self.state is NonInviteClientState.PROCEEDING:
                # §17.1.2.2: in Proceeding, retransmit every T2.
                self._timers.intervals[Timer.E] = self._timers.config.t2
                self._timers.deadlines[Timer.E] = due + self._timers.config.t2
                return [self._send(self.request)]
            case Timer.F if self.state in (NonInviteClientState.TRYING, NonInviteClientState.PROCEEDING):
                return [Timeout(self.key, Timer.F), *self._terminate()]
            case Timer.K:
                return self._terminate()
            case _:
                return []

    def _terminate(self) -> list[TxAction]:
        self.state = NonInviteClientState.TERMINATED
        self._timers.clear()
        return [Terminated(self.key)]


class InviteServerTransaction(_Transaction):
    """INVITE server transaction (§17.2.1 with RFC 6026 Accepted state).

    The TU sends responses through `respond`. After a 2xx the TU itself retransmits the 2xx
    until the ACK arrives (§13.3.1.4); those pass through `respond` in Accepted state.
    """

    def __init__(
        self, key: TransactionKey, request: Request, dest: Destination, reliable: bool, config: TimerConfig
    ) -> None:
        super().__init__(key, request, dest, reliable, config)
        self.state = InviteServerState.PROCEEDING
        self._last: Response | None = None

    @property
    def terminated(self) -> bool:
        return self.state is InviteServerState.TERMINATED

    def start(self, now: float, trying: Response | None) -> list[TxAction]:
        """Begin; `trying` is the 100 Trying to send at once (§17.2.1: unless the TU answers
        within 200 ms), or None."""
        return self.respond(trying, now) if trying is not None else []

    def receive_request(self, request: Request, now: float) -> list[TxAction]:
        """A retransmitted INVITE (or an ACK, whose key maps to this transaction)."""
        if request.method == "ACK":
            match self.state:
                case InviteServerState.COMPLETED:
                    self._timers.stop(Timer.G, Timer.H)
                    self.state = InviteServerState.CONFIRMED
                    return [] if self._timers.start(Timer.I, now) else self._terminate()
                case InviteServerState.ACCEPTED:
                    return [AckReceived(self.key, request)]
                case _:
                    return []
        match self.state:
            case InviteServerState.PROCEEDING | InviteServerState.COMPLETED:
                # §17.2.1: a retransmitted INVITE gets the most recent response again.
                return [self._send(self._last)] if self._last is not None else []
            case InviteServerState.CONFIRMED | InviteServerState.ACCEPTED | InviteServerState.TERMINATED:
                return []  # absorbed (RFC 6026 §7.1 for Accepted)
            case _:
                assert_never(self.state)

    def respond(self, response: Response, now: float) -> list[TxAction]:
        """Send a response from the TU."""
        status = response.status
        match self.state:
            case InviteServerState.PROCEEDING:
                self._last = response
                if status < 200:
                    return [self._send(response)]
                if status < 300:
                    self.state = InviteServerState.ACCEPTED
                    self._timers.start(Timer.L, now)
                    return [self._send(response)]
                self.state = InviteServerState.COMPLETED
                self._timers.start(Timer.G, now)
                self._timers.start(Timer.H, now)
                return [self._send(response)]
            case InviteServerState.ACCEPTED if 200 <= status < 300:
                return [self._send(response)]  # RFC 6026 §8.5: the TU retransmits its 2xx
            case _:
                raise LocalProtocolError(f"cannot send {status} in INVITE server state {self.state.value}")

    def _on_timer(self, timer: Timer, due: float) -> list[TxAction]:
        match timer:
            case Timer.G if self.state is InviteServerState.COMPLETED and self._last is not None:
                self._timers.restart_backoff(Timer.G, due)
                return [self._send(self._last)]
            case Timer.H if self.state is InviteServerState.COMPLETED:
                return [Timeout(self.key, Timer.H), *self._terminate()]
            case Timer.I | Timer.L:
                return self._terminate()
            case _:
                return []

    def _terminate(self) -> list[TxAction]:
        self.state = InviteServerState.TERMINATED
        self._timers.clear()
        return [Terminated(self.key)]


class NonInviteServerTransaction(_Transaction):
    """Non-INVITE server transaction (§17.2.2)."""

    def __init__(
        self, key: TransactionKey, request: Request, dest: Destination, reliable: bool, config: TimerConfig
    ) -> None:
        super().__init__(key, request, dest, reliable, config)
        self.state = NonInviteServerState.TRYING
        self._last: Response | None = None

    @property
    def terminated(self) -> bool:
        return self.state is NonInviteServerState.TERMINATED

    def receive_request(self, request: Request, now: float) -> list[TxAction]:
        """A retransmission of the request."""
        match self.state:
            case NonInviteServerState.TRYING | NonInviteServerState.TERMINATED:
                return []  # §17.2.2: absorbed while Trying
            case NonInviteServerState.PROCEEDING | NonInviteServerState.COMPLETED:
                return [self._send(self._last)] if self._last is not None else []
            case _:
                assert_never(self.state)

    def respond(self, response: Response, now: float) -> list[TxAction]:
        """Send a response from the TU."""
        match self.state:
            case NonInviteServerState.TRYING | NonInviteServerState.PROCEEDING:
                self._last = response
                if response.status < 200:
                    self.state = NonInviteServerState.PROCEEDING
                    return [self._send(response)]
                self.state = NonInviteServerState.COMPLETED
                out: list[TxAction] = [self._send(response)]
                if not self._timers.start(Timer.J, now):
                    out += self._terminate()
                return out
            case NonInviteServerState.COMPLETED | NonInviteServerState.TERMINATED:
                raise LocalProtocolError(f"cannot send {response.status} in state {self.state.value}")
            case _:
                assert_never(self.state)

    def _on_timer(self, timer: Timer, due: float) -> list[TxAction]:
        return self._terminate() if timer is Timer.J else []

    def _terminate(self) -> list[TxAction]:
        self.state = NonInviteServerState.TERMINATED
        self._timers.clear()
        return [Terminated(self.key)]


ClientTransaction = InviteClientTransaction | NonInviteClientTransaction
ServerTransaction = InviteServerTransaction | NonInviteServerTransaction
