"""Property tests: only SipParseError escapes the parsers, round trips hold, and time stays linear.

Hypothesis settings: 300 examples per property (derandomized, no deadline: the machine is shared);
the linear-time checks compare the CPU time of parsing adversarial inputs of 16 KB and 128 KB and
allow a factor of 24 (linear would be 8, quadratic 64).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.sip.test_sip_parser import F1, F9, REGISTER_401

from sip.errors import SipParseError
from sip.message import Request, Response
from sip.parser import BadMessage, KeepAlive, Limits, StreamParser, parse_datagram_untrusted

FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
SAMPLES = [F1, F9, REGISTER_401]


def _parse_or_error(data: bytes) -> None:
    msg: Request | Response | KeepAlive | None = None
    try:
        msg = parse_datagram_untrusted(data)
    except SipParseError as err:
        error: SipParseError | None = err
    else:
        error = None
    if error is not None:
        assert str(error)
        assert error.status_hint in (400, 505, 513)
        return
    if msg is None or isinstance(msg, KeepAlive):
        return
    # Anything accepted must serialize and parse back to the same message.
    assert parse_datagram_untrusted(bytes(msg)) == msg
    # ... and its typed accessors must not fail (the parser validated them).
    _ = (msg.call_id, msg.cseq, msg.from_, msg.to, msg.vias, msg.contacts, msg.record_route, msg.route)


@FUZZ
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_only_raise_sip_parse_error(data: bytes) -> None:
    _parse_or_error(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.sampled_from(list(b' \t\r\n:;,<>"\\@=/0aZ\x00\xff')))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 20))]
        else:
            end = draw(st.integers(pos, min(len(data), pos + 40)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_messages_only_raise_sip_parse_error(data: bytes) -> None:
    _parse_or_error(data)


@FUZZ
@given(mutated(), st.lists(st.integers(1, 64), min_size=1, max_size=10))
def test_stream_parser_never_raises_and_is_split_invariant(data: bytes, cuts: list[int]) -> None:
    stream = data + F9
    whole = StreamParser()
    whole.feed(stream)
    expected = whole.events()
    pieces = StreamParser()
    got = []
    pos = 0
    for size in cuts * (len(stream) // max(1, sum(cuts)) + 1):
        if pos >= len(stream) or pieces.broken:
            break
        pieces.feed(stream[pos : pos + size])
        pos += size
        got.extend(pieces.events())
    if pos < len(stream) and not pieces.broken:
        pieces.feed(stream[pos:])
        got.extend(pieces.events())

    # Keep-alives may be split differently across reads; messages and errors may not.
    def norm(events: list[object]) -> list[object]:
        return [
            e if not isinstance(e, BadMessage) else ("bad", e.fatal)
            for e in events
            if not isinstance(e, KeepAlive)
        ]

    assert norm(got) == norm(expected)  # type: ignore[arg-type]
    assert all(isinstance(e, (Request, Response, KeepAlive, BadMessage)) for e in expected)


def _timed(func: Callable[[bytes], object], data: bytes) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()  # CPU time: the machine is shared
        with contextlib.suppress(SipParseError):
            func(data)
        best = min(best, time.process_time() - start)
    return best


def _stream_bytewise(data: bytes) -> None:
    parser = StreamParser(Limits(max_message_size=1 << 20))
    for i in range(0, len(data), 1):
        parser.feed(data[i : i + 1])
        parser.events()


ADVERSARIAL: dict[str, Callable[[int], bytes]] = {
    "quotes": lambda n: F1.replace(b"To: Bob", b'To: "' + b'\\"' * (n // 2) + b"Bob"),
    "angles": lambda n: F1.replace(b"Contact: <", b"Contact: " + b"<" * n + b"<"),
    "commas": lambda n: F1.replace(b"Contact: <", b"Contact: " + b"<sip:a@b>," * (n // 10) + b"<"),
    "semicolons": lambda n: F1.replace(b"branch=", b";" * n + b"branch="),
    "spaces": lambda n: F1.replace(b"Via: SIP/2.0/UDP", b"Via: SIP/2.0/UDP" + b" " * n + b"!"),
    "folding": lambda n: F1.replace(
        b"Max-Forwards: 70", b"Max-Forwards: 70\r\nSubject: s" + b"\r\n 1" * (n // 4)
    ),
    "empty-folds": lambda n: F1.replace(
        b"Call-ID: a84b4c76e66710", b"Call-ID: a84b4c76e66710" + b"\r\n " * (n // 3)
    ),
    "no-end": lambda n: b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * (n // 6),
    "lf-pairs": lambda n: b"\r\n" * (n // 2) + F9,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(ADVERSARIAL))
def test_parse_time_grows_linearly(kind: str) -> None:
    make = ADVERSARIAL[kind]
    limits = Limits(max_message_size=1 << 20, max_headers=100_000, max_line_length=1 << 20)

    def parse(data: bytes) -> None:
        parse_datagram_untrusted(data, limits)

    small, large = make(16_000), make(128_000)  # 8x the input: linear ~8x, quadratic ~64x
    t_small = max(_timed(parse, small), 1e-3)
    t_large = _timed(parse, large)
    assert t_large < 24 * t_small + 0.005, (kind, t_small, t_large)
    assert _timed(parse_datagram_untrusted, make(64_000)) < 0.5  # default limits: quick either way


@pytest.mark.timeout(60)
def test_stream_bytewise_feeding_is_linear() -> None:
    small = b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 1000
    large = b"INVITE sip:a@b SIP/2.0\r\n" + b"X: y\r\n" * 8000
    t_small = max(_timed(_stream_bytewise, small), 1e-3)
    t_large = _timed(_stream_bytewise, large)
    assert t_large < 24 * t_small + 0.01, (t_small, t_large)
