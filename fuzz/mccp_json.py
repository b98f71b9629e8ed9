"""MCCP frames from the page: `mccp.codec.decode_untrusted` and a `mccp.session.Session`.

Contract: only `mccp.errors.ParseError` escapes the decoder, and only `RemoteProtocolError` (its
parent) escapes `Session.receive_text`; a decoded message encodes and decodes back to itself.
The input is split at NUL bytes into successive frames of one connection.
"""

from __future__ import annotations

from mccp.codec import decode_untrusted, encode
from mccp.errors import ParseError, RemoteProtocolError
from mccp.messages import Answer, Hangup, Progress
from mccp.session import Session, SessionState

ANSWER_SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"


def _decode(text: str) -> None:
    try:
        msg = decode_untrusted(text)
    except ParseError as err:
        assert err.reason, err
        assert 400 <= int(err.code) <= 599, err
        return
    assert decode_untrusted(encode(msg)) == msg


def one_input(data: bytes) -> None:
    """Decode every frame alone, then feed them in order to one session that answers calls."""
    frames = [f.decode("utf-8", "replace") for f in data.split(b"\0")]
    session = Session(now=0.0, call_timeout=10.0)
    confirmed = False
    for now, text in enumerate(frames):
        _decode(text)
        state = session.state
        try:
            session.receive_text(text)
        except RemoteProtocolError as err:
            assert session.state is state, "a refused frame changed the state"
            assert err.reason
        # The bridge plays its part: answers a call, and confirms a page hangup once.
        if session.state is SessionState.CALLING:
            session.send(Progress(ANSWER_SDP) if now % 2 else Answer(ANSWER_SDP))
        elif session.state is SessionState.ENDED and session.ended_by == "page" and not confirmed:
            confirmed = True
            session.send(Hangup(200, "bye"))
        session.handle_timeout(float(now))
    assert session.state in SessionState
