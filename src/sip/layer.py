"""The transaction layer: routes messages to transactions and the rest to the TU (RFC 3261 §17).

Public API — `TransactionLayer(config=TimerConfig(), trying=True)`:

* `send_request(request, dest, now, reliable) -> (key, actions)` — start a client transaction
  (INVITE or non-INVITE by method). ACK is not a transaction: the dialog sends ACK for 2xx
  directly; the layer itself ACKs non-2xx answers.
* `receive(message, source, now, reliable) -> actions` — a parsed message from the transport.
  Responses go to their client transaction (§17.1.3: top-Via branch + CSeq method) or come
  out as `StrayResponse` (e.g. a 2xx retransmitted after the transaction ended, for the dialog
  to ACK again); responses with several Vias are dropped (§8.1.3.3: we are a UA). Requests
  go to their server transaction (§17.2.3: branch + sent-by + method, ACK matching INVITE)
  as retransmissions, or create one and come out as `RequestReceived` (an INVITE also gets
  an automatic 100 Trying when `trying`). An ACK without a transaction comes out as
  `AckReceived(None, ack)`. A CANCEL's `RequestReceived.cancels` names the INVITE server
  transaction it targets (§9.2), or is None (the TU answers 481).
* `respond(key, response, now) -> actions` — a response from the TU on a server transaction.
* `next_deadline()`, `handle_timeout(now)`, `transport_error(key, now)`.
* `get(key)` and `__len__` for inspection (a transaction is changed only through the layer).

Deadlines are kept in a heap of (deadline, sequence, key) entries, so that `next_deadline()` (asked
at every wake-up of the edge's timer task) does not scan every live transaction. Each input to a
transaction pushes its new deadline when it changed; the entry of a moved or ended deadline stays
in the heap, is skipped when it reaches the top (it no longer equals the transaction's scheduled
deadline), and the heap is rebuilt when such stale entries outnumber the live ones.

All outputs are `sip.transaction` actions plus `RequestReceived` and `StrayResponse`; the layer
drops a transaction when it emits `Terminated`. Requests without an RFC 3261 branch (no
`z9hG4bK` cookie) are keyed on a synthesized branch from Call-ID, From tag, CSeq and sent-by
(a simplification of the RFC 2543 matching of §17.2.3).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

from sip.errors import LocalProtocolError, SipParseError
from sip.message import Request, Response, make_response
from sip.timers import TimerConfig
from sip.transaction import (
    AckReceived,
    ClientTransaction,
    Destination,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    Terminated,
    TransactionKey,
    TxAction,
)

MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU, with the server transaction created for it.

    `source` is where it came from; `cancels` is the INVITE transaction a CANCEL targets.
    """

    key: TransactionKey
    request: Request
    source: Destination
    cancels: TransactionKey | None = None


@dataclass(frozen=True, slots=True)
class StrayResponse:
    """A response that matched no client transaction (§17.1.3); 2xx to INVITE go to the dialog."""

    response: Response
    source: Destination


LayerAction = TxAction | RequestReceived | StrayResponse


def _branch(request: Request | Response) -> tuple[str, tuple[str, int | None]]:
    via = request.top_via
    branch = via.branch
    if branch is None or not branch.startswith(MAGIC_COOKIE):
        # RFC 2543 peers: no usable branch, synthesize one from the dialog/transaction identifiers.
        tag = request.from_.tag or ""
        branch = f"2543:{request.call_id}:{tag}:{request.cseq.seq}:{via.host}:{via.port}:{branch or ''}"
    return branch, via.sent_by


def client_key(message: Request | Response) -> TransactionKey:
    """The client-transaction key of a request we send or of a response to it (§17.1.3)."""
    branch, _ = _branch(message)
    method = message.cseq.method
    return TransactionKey(branch, "INVITE" if method == "ACK" else method, server=False)


def server_key(request: Request, method: str | None = None) -> TransactionKey:
    """The server-transaction key of a received request (§17.2.3); ACK maps to INVITE."""
    branch, sent_by = _branch(request)
    m = method or request.method
    return TransactionKey(branch, "INVITE" if m == "ACK" else m, server=True, sent_by=sent_by)


class TransactionLayer:
    """A map of live transactions, routing inputs and collecting actions."""

    def __init__(self, config: TimerConfig | None = None, trying: bool = True) -> None:
        self.config = config or TimerConfig()
        self.trying = trying
        self._clients: dict[TransactionKey, ClientTransaction] = {}
        self._servers: dict[TransactionKey, ServerTransaction] = {}
        # the deadline each transaction has in the heap; heap entries not matching it are stale
        self._scheduled: dict[TransactionKey, float] = {}
        self._heap: list[tuple[float, int, TransactionKey]] = []
        self._sequence = itertools.count()  # heap tie-break: keys are not ordered

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    def get(self, key: TransactionKey) -> ClientTransaction | ServerTransaction | None:
        """The live transaction with this key, or None."""
        return self._clients.get(key) if not key.server else self._servers.get(key)

    def send_request(
        self, request: Request, dest: Destination, now: float, reliable: bool
    ) -> tuple[TransactionKey, list[LayerAction]]:
        """Start a client transaction for `request` and return its key and first actions."""
        if request.method == "ACK":
            raise LocalProtocolError("ACK is sent without a transaction (§17.1.1.3, §13.2.2.4)")
        key = client_key(request)
        if key in self._clients:
            raise LocalProtocolError(f"a client transaction with branch {key.branch!r} already exists")
        tx: ClientTransaction
        if request.method == "INVITE":
            tx = InviteClientTransaction(key, request, dest, reliable, self.config)
        else:
            tx = NonInviteClientTransaction(key, request, dest, reliable, self.config)
        self._clients[key] = tx
        return key, self._collect(tx.start(now), tx)

    def receive(
        self, message: Request | Response, source: Destination, now: float, reliable: bool
    ) -> list[LayerAction]:
        """Route a received message (already validated by `sip.parser`)."""
        try:
            if isinstance(message, Response):
                return self._receive_response(message, source, now)
            return self._receive_request(message, source, now, reliable)
        except SipParseError:
            return []  # a hand-built message lacking Via/CSeq: nothing can route it

    def _receive_response(self, response: Response, source: Destination, now: float) -> list[LayerAction]:
        if len(response.headers.get_all("Via")) != 1:
            return []  # §8.1.3.3: a UA discards a response with more than one Via
        tx = self._clients.get(client_key(response))
        if tx is None:
            return [StrayResponse(response, source)]
        return self._collect(tx.receive(response, now), tx)

    def _receive_request(
        self, request: Request, source: Destination, now: float, reliable: bool
    ) -> list[LayerAction]:
        key = server_key(request)
        tx = self._servers.get(key)
        if request.method == "ACK":
            if tx is None:
                return [AckReceived(None, request)]  # ACK for a 2xx: the dialog's business
            return self._collect(tx.receive_request(request, now), tx)
        if tx is not None:
            return self._collect(tx.receive_request(request, now), tx)
        out: list[LayerAction] = []
        if request.method == "INVITE":
            invite = InviteServerTransaction(key, request, source, reliable, self.config)
            self._servers[key] = invite
            out.append(RequestReceived(key, request, source))
            trying = make_response(request, 100) if self.trying else None
            out += self._collect(invite.start(now, trying), invite)
            return out
        server = NonInviteServerTransaction(key, request, source, reliable, self.config)
        self._servers[key] = server
        self._schedule(server)
        cancels: TransactionKey | None = None
        if request.method == "CANCEL":
            # §9.2: the CANCEL matches the INVITE transaction with the same branch and sent-by.
            target = server_key(request, "INVITE")
            if target in self._servers:
                cancels = target
        out.append(RequestReceived(key, request, source, cancels))
        return out

    def respond(self, key: TransactionKey, response: Response, now: float) -> list[LayerAction]:
        """Send a TU response on the server transaction `key`."""
        tx = self._servers.get(key)
        if tx is None:
            raise LocalProtocolError(f"no server transaction {key.method} {key.branch!r}")
        return self._collect(tx.respond(response, now), tx)

    def next_deadline(self) -> float | None:
        """The earliest deadline of all transactions, or None."""
        heap = self._heap
        while heap:
            deadline, _, key = heap[0]
            if self._scheduled.get(key) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: that deadline moved or its transaction ended
        return None

    def handle_timeout(self, now: float) -> list[LayerAction]:
        """Fire the due timers of every transaction, earliest deadline first."""
        out: list[LayerAction] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            if self._scheduled.get(key) != deadline:
                continue
            del self._scheduled[key]
            tx = self.get(key)
            if tx is not None:
                out += self._collect(tx.handle_timeout(now), tx)
        return out

    def transport_error(self, key: TransactionKey, now: float) -> list[LayerAction]:
        """The edge could not send for transaction `key`."""
        tx = self.get(key)
        return self._collect(tx.transport_error(now), tx) if tx is not None else []

    def _collect(
        self, actions: list[TxAction], tx: ClientTransaction | ServerTransaction
    ) -> list[LayerAction]:
        for action in actions:
            if isinstance(action, Terminated):
                if action.key.server:
                    self._servers.pop(action.key, None)
                else:
                    self._clients.pop(action.key, None)
        self._schedule(tx)
        return list(actions)

    def _schedule(self, tx: ClientTransaction | ServerTransaction) -> None:
        """Put `tx`'s deadline in the heap after an input changed it (or drop it: tx ended)."""
        key = tx.key
        live = self._servers.get(key) if key.server else self._clients.get(key)
        deadline = tx.next_deadline() if live is tx else None
        if deadline == self._scheduled.get(key):
            return
        if deadline is None:
            del self._scheduled[key]
            return
        self._scheduled[key] = deadline
        heapq.heappush(self._heap, (deadline, next(self._sequence), key))
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._heap = [(d, next(self._sequence), k) for k, d in self._scheduled.items()]
            heapq.heapify(self._heap)
