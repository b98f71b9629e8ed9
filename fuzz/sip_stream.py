"""SIP over TCP: `sip.parser.StreamParser` fed the same bytes whole and in random chunks.

Contract: `next_event()` never raises (bad input is a `BadMessage` event); after a fatal one the
parser stays broken; every message it yields passes the datagram target's accessor checks; and the
messages and errors do not depend on how the bytes were cut (keep-alives may: a CRLFCRLF split
across reads is reported as a pong and a ping, RFC 5626 section 4.4.1).
The first byte of the input seeds the chunk sizes; the rest is the stream.
"""

from __future__ import annotations

from fuzz.known import is_known
from fuzz.sip_datagram import check_message
from sip.errors import LocalProtocolError as SipLocalProtocolError
from sip.parser import BadMessage, KeepAlive, Limits, StreamEvent, StreamParser

LIMITS = Limits(max_message_size=8192, max_headers=40, max_line_length=2048)


def _run(stream: bytes, cuts: list[int]) -> list[StreamEvent]:
    parser = StreamParser(LIMITS)
    events: list[StreamEvent] = []
    pos = 0
    for n in cuts:
        if parser.broken or pos >= len(stream):
            break
        parser.feed(stream[pos : pos + n])
        pos += n
        events.extend(parser.events())
    if not parser.broken:
        parser.feed(stream[pos:])
        events.extend(parser.events())
    if parser.broken:
        assert isinstance(events[-1], BadMessage)
        assert events[-1].fatal
        assert parser.next_event() is None
    return events


def _essence(events: list[StreamEvent]) -> list[object]:
    return [
        (str(e.error), e.fatal) if isinstance(e, BadMessage) else e
        for e in events
        if not isinstance(e, KeepAlive)
    ]


def one_input(data: bytes) -> None:
    """Whole, byte-sized-by-seed chunks; the same messages and errors either way."""
    if not data:
        return
    seed, stream = data[0], data[1:]
    whole = _run(stream, [])
    step = seed % 17 + 1
    cuts = [(i * 7919 + seed) % step + 1 for i in range(len(stream))]
    chunked = _run(stream, cuts)
    for event in whole:
        if isinstance(event, BadMessage):
            assert str(event.error)
            assert event.error.status_hint in (400, 505, 513)
        elif not isinstance(event, KeepAlive):
            try:
                check_message(event)
            except SipLocalProtocolError as exc:
                if is_known(exc) is None:
                    raise
    assert _essence(whole) == _essence(chunked), (_essence(whole), _essence(chunked))
