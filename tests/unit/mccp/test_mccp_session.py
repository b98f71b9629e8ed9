"""The MCCP session state machine against scripted pages: every transition, every refusal."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mccp.codec import encode
from mccp.errors import ErrorCode, LocalProtocolError, ParseError, RemoteProtocolError
from mccp.messages import (
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
from mccp.session import Session, SessionState

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
SDP2 = SDP + "a=sendrecv\r\n"
CALL = Call("100", "secret", "101", SDP)
S = SessionState


def session_in(state: SessionState) -> Session:
    s = Session(now=0.0)
    path: dict[SessionState, list[PageMessage | BridgeMessage]] = {
        S.AWAITING_CALL: [],
        S.CALLING: [CALL, Trying()],
        S.EARLY: [CALL, Progress(SDP)],
        S.ANSWERED: [CALL, Answer(SDP)],
        S.ENDED: [CALL, Hangup(486, "Busy Here")],
    }
    for msg in path[state]:
        if isinstance(msg, Call | Dtmf | HangupRequest | Ping):
            s.receive(msg)
        else:
            s.send(msg)
    assert s.state is state
    return s


def test_happy_path_with_early_media() -> None:
    s = Session(now=0.0)
    assert s.receive_text(encode(CALL)) == CALL
    assert s.call == CALL
    assert s.state is S.CALLING
    assert s.send(Trying()) == '{"type":"trying"}'
    s.send(Ringing())
    assert s.state is S.CALLING
    s.send(Progress(SDP))
    assert (s.state, s.answer_sdp) == (S.EARLY, SDP)
    s.send(Ringing())  # 180 after 183 happens
    s.receive_text('{"type":"dtmf","digits":"1"}')
    s.send(Answer(SDP2))
    assert (s.state, s.answer_sdp) == (S.ANSWERED, SDP2)
    s.receive_text('{"type":"dtmf","digits":"#"}')
    s.receive_text('{"type":"ping"}')
    s.send(Pong())
    assert s.receive_text('{"type":"hangup"}') == HangupRequest()
    assert (s.state, s.ended_by) == (S.ENDED, "page")


PAGE_ALLOWED: dict[SessionState, set[str]] = {
    S.AWAITING_CALL: {"call", "hangup", "ping"},
    S.CALLING: {"hangup", "ping"},
    S.EARLY: {"dtmf", "hangup", "ping"},
    S.ANSWERED: {"dtmf", "hangup", "ping"},
    S.ENDED: set(),
}
PAGE_NEXT = {"call": S.CALLING, "hangup": S.ENDED}
PAGE_MSGS: list[PageMessage] = [CALL, Dtmf("5"), HangupRequest(), Ping()]


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
@pytest.mark.parametrize("msg", PAGE_MSGS, ids=lambda m: m.TYPE)
def test_page_transition_table(state: SessionState, msg: PageMessage) -> None:
    s = session_in(state)
    if msg.TYPE in PAGE_ALLOWED[state]:
        s.receive(msg)
        assert s.state is PAGE_NEXT.get(msg.TYPE, state)
    else:
        with pytest.raises(RemoteProtocolError) as info:
            s.receive_text(encode(msg))
        assert info.value.code == ErrorCode.WRONG_STATE
        assert f"'{msg.TYPE}'" in info.value.reason
        assert s.state is state  # a refused message changes nothing


BRIDGE_ALLOWED: dict[SessionState, set[str]] = {
    S.AWAITING_CALL: {"hangup", "error", "pong"},
    S.CALLING: {"trying", "ringing", "progress", "answer", "hangup", "error", "pong"},
    S.EARLY: {"ringing", "progress", "answer", "hangup", "error", "pong"},
    S.ANSWERED: {"hangup", "error", "pong"},
    S.ENDED: {"error"},
}
BRIDGE_NEXT = {"progress": S.EARLY, "answer": S.ANSWERED, "hangup": S.ENDED}
BRIDGE_MSGS: list[BridgeMessage] = [
    Trying(),
    Ringing(),
    Progress(SDP),
    Answer(SDP),
    Hangup(487, "Request Terminated"),
    ErrorReply(400, "bad"),
    Pong(),
]


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
@pytest.mark.parametrize("msg", BRIDGE_MSGS, ids=lambda m: m.TYPE)
def test_bridge_transition_table(state: SessionState, msg: BridgeMessage) -> None:
    s = session_in(state)
    if msg.TYPE in BRIDGE_ALLOWED[state]:
        assert json.loads(s.send(msg))["type"] == msg.TYPE
        assert s.state is BRIDGE_NEXT.get(msg.TYPE, state)
    else:
        with pytest.raises(LocalProtocolError, match=f"cannot send '{msg.TYPE}' in state {state.value}"):
            s.send(msg)
        assert s.state is state


def test_second_call_is_a_remote_error_with_reply() -> None:
    s = session_in(S.CALLING)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_text(encode(Call("200", "x", "201", SDP)))
    reply = ErrorReply(info.value.code, info.value.reason)
    assert encode(reply) == (
        '{"type":"error","code":409,"reason":"\'call\' refused: this connection already has a call"}'
    )
    assert s.call == CALL


def test_dtmf_before_media_is_refused() -> None:
    s = session_in(S.CALLING)
    with pytest.raises(RemoteProtocolError, match="'dtmf' refused in state calling: no media yet"):
        s.receive_text('{"type":"dtmf","digits":"1"}')


def test_bridge_may_confirm_page_hangup_once() -> None:
    s = session_in(S.ANSWERED)
    s.receive(HangupRequest())
    s.send(Hangup(200, "Bye"))
    assert (s.state, s.ended_by) == (S.ENDED, "page")
    with pytest.raises(LocalProtocolError, match="cannot send 'hangup' in state ended"):
        s.send(Hangup(200, "Bye"))


def test_bridge_hangup_ends() -> None:
    s = session_in(S.ANSWERED)
    s.send(Hangup(200, "Normal"))
    assert (s.state, s.ended_by) == (S.ENDED, "bridge")
    with pytest.raises(RemoteProtocolError, match="'hangup' after the call ended"):
        s.receive(HangupRequest())


def test_parse_errors_leave_state() -> None:
    s = session_in(S.EARLY)
    with pytest.raises(ParseError):
        s.receive_text("{oops")
    assert s.state is S.EARLY


def test_session_frame_cap() -> None:
    s = Session(now=0.0, max_chars=50)
    with pytest.raises(ParseError) as info:
        s.receive_text(json.dumps({"type": "ping", "x": "y" * 60}))
    assert info.value.code == ErrorCode.TOO_BIG


def test_call_timeout() -> None:
    s = Session(now=100.0, call_timeout=5.0)
    assert s.next_deadline() == 105.0
    assert s.handle_timeout(104.9) is None
    hangup = s.handle_timeout(105.0)
    assert hangup == Hangup(408, "no call request in time")
    assert s.next_deadline() is None
    assert s.handle_timeout(200.0) is None
    s.send(hangup)
    assert s.state is S.ENDED


def test_call_cancels_timeout() -> None:
    s = Session(now=0.0, call_timeout=5.0)
    s.receive(CALL)
    assert s.next_deadline() is None
    assert s.handle_timeout(10.0) is None


def test_page_hangup_cancels_timeout() -> None:
    s = Session(now=0.0, call_timeout=5.0)
    s.receive(HangupRequest())
    assert s.next_deadline() is None


# ------------------------------------------------------------------ random exchanges

_page_msgs = st.sampled_from(PAGE_MSGS)
_bridge_msgs = st.sampled_from(BRIDGE_MSGS)
_texts = st.sampled_from(['{"type":"ping"}', "{", '{"type":"dtmf","digits":"9"}', "[]", encode(CALL)])
NEXT: dict[SessionState, set[SessionState]] = {
    S.AWAITING_CALL: {S.AWAITING_CALL, S.CALLING, S.ENDED},
    S.CALLING: {S.CALLING, S.EARLY, S.ANSWERED, S.ENDED},
    S.EARLY: {S.EARLY, S.ANSWERED, S.ENDED},
    S.ANSWERED: {S.ANSWERED, S.ENDED},
    S.ENDED: {S.ENDED},
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_page_msgs, _bridge_msgs, _texts), max_size=25))
def test_random_exchanges_keep_the_invariants(items: list[PageMessage | BridgeMessage | str]) -> None:
    s = Session(now=0.0)
    for item in items:
        before = s.state
        try:
            match item:
                case str():
                    s.receive_text(item)
                case Call() | Dtmf() | HangupRequest() | Ping():
                    s.receive(item)
                case _:
                    s.send(item)
        except (RemoteProtocolError, LocalProtocolError):
            assert s.state is before  # a refused message changes nothing
            continue
        assert s.state in NEXT[before]
        assert (s.call is None) == (s.state is S.AWAITING_CALL or (s.state is S.ENDED and s.call is None))
        assert (s.state is S.ENDED) == (s.ended_by is not None)
