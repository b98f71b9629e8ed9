"""The MCCP per-connection state machine (pure, sans-IO).

Theory of operation
-------------------
One WebSocket connection carries at most one call. The :class:`Session` sees every message
in both directions and refuses the ones the protocol does not allow in the current state:

* a page message that is not allowed raises :class:`~mccp.errors.RemoteProtocolError`
  (code 409); the server answers it with an ``error`` and the session stays where it was;
* a bridge message that is not allowed raises :class:`~mccp.errors.LocalProtocolError`:
  that is a bug in the caller, and nothing is sent.

Transitions (docs/mccp.md, "States", is the authority; this table is the code)::

    state          page message     -> state         bridge message         -> state
    AWAITING_CALL  call             -> CALLING       hangup                 -> ENDED
                   hangup           -> ENDED         error, pong            -> (same)
    CALLING        hangup           -> ENDED         trying, ringing        -> CALLING
                                                     progress               -> EARLY
                                                     answer                 -> ANSWERED
                                                     hangup                 -> ENDED
    EARLY          dtmf             -> EARLY         ringing, progress      -> EARLY
                   hangup           -> ENDED         answer                 -> ANSWERED
                                                     hangup                 -> ENDED
    ANSWERED       dtmf             -> ANSWERED      hangup                 -> ENDED
                   hangup           -> ENDED
    any but ENDED  ping             -> (same)        error, pong            -> (same)
    ENDED          (nothing)                         error                  -> ENDED
                                                     hangup (once, only
                                                     after the page's)      -> ENDED

The call timeout is a timer input in the sans-IO style: :meth:`Session.next_deadline` says when,
and :meth:`Session.handle_timeout` returns the ``hangup`` (code 408) to send if no ``call`` came.
"""

from __future__ import annotations

from enum import Enum
from typing import assert_never

from .codec import decode_untrusted, encode
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .limits import MAX_MESSAGE_CHARS
from .messages import (
    Answer,
    BridgeMessage,
    Call,
    Dtmf,
    ErrorReply,
    Hangup,
    HangupRequest,
    PageMessage,
    Ping,
    Pong,
    Progress,
    Ringing,
    Trying,
)


class SessionState(Enum):
    """Where one MCCP connection's call is."""

    AWAITING_CALL = "awaiting_call"
    CALLING = "calling"
    EARLY = "early"
    ANSWERED = "answered"
    ENDED = "ended"


_S = SessionState


class Session:
    """Validates one connection's MCCP exchange in both directions.

    ``now`` is the connection's start time and ``call_timeout`` how long the page has to send
    ``call`` (seconds, same clock as later ``now`` values).
    """

    def __init__(self, *, now: float, call_timeout: float = 10.0, max_chars: int = MAX_MESSAGE_CHARS) -> None:
        self.state = SessionState.AWAITING_CALL
        self.call: Call | None = None
        """The accepted ``call`` message, once there is one (until :meth:`release_call`)."""
        self.answer_sdp: str | None = None
        """The last SDP sent in ``progress`` or ``answer``."""
        self.ended_by: str | None = None
        """``"page"`` or ``"bridge"`` once the session is ENDED."""
        self._call_deadline: float | None = now + call_timeout
        self._bridge_hung_up = False
        self._max_chars = max_chars

    # ------------------------------------------------------------------ page -> bridge

    def receive_text(self, text: str) -> PageMessage:
        """Decode and accept one text frame from the page.

        Raises :class:`~mccp.errors.RemoteProtocolError` (or its subclass ParseError) carrying
        the code and reason of the ``error`` to send back; the state is unchanged then.
        """
        msg = decode_untrusted(text, max_chars=self._max_chars)
        self.receive(msg)
        return msg

    def release_call(self) -> None:
        """Let go of the ``call`` message (its SDP offer is ~5 KB from a browser) once whoever needs
        it has it; the session's state is unchanged."""
        self.call = None

    def receive(self, msg: PageMessage) -> None:
        """Accept an already decoded page message, or raise RemoteProtocolError (409)."""
        state = self.state
        if state is _S.ENDED:
            raise RemoteProtocolError(ErrorCode.WRONG_STATE, f"'{msg.TYPE}' after the call ended")
        match msg:
            case Call():
                if state is not _S.AWAITING_CALL:
                    raise RemoteProtocolError(
                        ErrorCode.WRONG_STATE, "'call' refused: this connection already has a call"
                    )
                self.call = msg
                self._call_deadline = None
                self.state = _S.CALLING
            case Dtmf():
                # DTMF needs a media path: early media or an answered call.
                if state not in (_S.EARLY, _S.ANSWERED):
                    raise RemoteProtocolError(
                        ErrorCode.WRONG_STATE, f"'dtmf' refused in state {state.value}: no media yet"
                    )
            case HangupRequest():
                self._end("page")
            case Ping():
                pass
            case _:
                assert_never(msg)

    # ------------------------------------------------------------------ bridge -> page

    def send(self, msg: BridgeMessage) -> str:
        """Check that ``msg`` may be sent now, apply its transition, and return its text.

        Raises :class:`~mccp.errors.LocalProtocolError` (state unchanged) if it may not.
        """
        state = self.state
        match msg:
            case ErrorReply():
                pass
            case Pong():
                self._require(msg, state is not _S.ENDED)
            case Trying():
                self._require(msg, state is _S.CALLING)
            case Ringing():
                self._require(msg, state in (_S.CALLING, _S.EARLY))
            case Progress():
                self._require(msg, state in (_S.CALLING, _S.EARLY))
                self.answer_sdp = msg.sdp
                self.state = _S.EARLY
            case Answer():
                self._require(msg, state in (_S.CALLING, _S.EARLY))
                self.answer_sdp = msg.sdp
                self.state = _S.ANSWERED
            case Hangup():
                # After the page's own hangup the bridge may confirm once, with the final code.
                self._require(msg, not self._bridge_hung_up)
                self._bridge_hung_up = True
                self._end(self.ended_by or "bridge")
            case _:
                assert_never(msg)
        return encode(msg)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timeout` has something to do, or None."""
        return self._call_deadline

    def handle_timeout(self, now: float) -> Hangup | None:
        """At or after the call deadline with no ``call``: the ``hangup`` (408) to send."""
        if self._call_deadline is None or now < self._call_deadline or self.state is not _S.AWAITING_CALL:
            return None
        self._call_deadline = None
        return Hangup(int(ErrorCode.CALL_TIMEOUT), "no call request in time")

    # ------------------------------------------------------------------ helpers

    def _require(self, msg: BridgeMessage, allowed: bool) -> None:
        if not allowed:
            raise LocalProtocolError(
                ErrorCode.WRONG_STATE, f"cannot send '{msg.TYPE}' in state {self.state.value}"
            )

    def _end(self, by: str) -> None:
        self.state = _S.ENDED
        self.ended_by = by
        self._call_deadline = None


__all__ = ["Session", "SessionState"]
