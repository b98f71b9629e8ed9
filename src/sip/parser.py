"""Parsing SIP messages from the network: UDP datagrams and TCP/TLS byte streams (RFC 3261 §7, §18.3).

Public API:

* `parse_datagram_untrusted(data, limits=DEFAULT_LIMITS) -> Request | Response | KeepAlive`:
  one message per datagram. Content-Length larger than what follows the headers is an error,
  a shorter one discards the excess (§18.3); without Content-Length the body is the rest of the
  datagram. A datagram of only CR/LF is a `KeepAlive`.
* `StreamParser(limits)`: `feed(data)` then `next_event()` until it returns None (needs more
  bytes); events are `Request`, `Response`, `KeepAlive` and `BadMessage(error, fatal)`. After a
  fatal BadMessage the stream cannot be resynchronised: close the connection.
* `Limits(max_message_size=65536, max_headers=100, max_line_length=8192)`.

Only `SipParseError` escapes. Its `status_hint` is 400, 505 (version) or 513 (size limits); for a
request whose head was readable, `error.head` lets `sip.message.error_response` build the answer.

Content-Length is consumed by framing and not kept in `msg.headers` (the serializer writes it
from the body), so a parsed message equals the built one it came from.

Tolerances (all documented deviations from strict RFC 3261 ABNF): bare LF line ends are
accepted like CRLF; CR/LF before the start line is skipped (§7.5 requires it on streams);
invalid UTF-8 is decoded with `surrogateescape`, so it survives a round trip unchanged.
Mandatory headers are checked on arrival (§8.1.1): Via, From, To, Call-ID, CSeq (its method must
equal the request method), and single-valued headers must not repeat; typed values used by the
transaction and dialog layers (Via, From, To, Contact, Route, Record-Route, CSeq, Max-Forwards,
Expires, Content-Type) are parsed so that accessors on a received message cannot fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sip.errors import LocalProtocolError, SipParseError
from sip.headers import (
    COMPACT_FORMS,
    KNOWN_HEADERS,
    LIST_HEADERS,
    STRICT_LIST_HEADERS,
    Headers,
    canonical_name,
    parse_uint,
    split_list,
)
from sip.message import Request, Response
from sip.uri import SipUri, is_token, parse_uri

_CRLF_BYTES = (bytearray(b"\r"), bytearray(b"\n"))
_HEAD_END = re.compile(rb"\n\r?\n")
_CONTENT_LENGTH_SNIFF = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*([0-9]{1,10})[ \t]*\r?$")
# Header names as they are usually written (canonical, lower case, compact), all valid tokens,
# to their canonical spelling: a hit skips the token check and the canonicalization.
_USUAL_NAMES = (
    {name: name for name in KNOWN_HEADERS}
    | {name.lower(): name for name in KNOWN_HEADERS}
    | COMPACT_FORMS
    | {compact.upper(): name for compact, name in COMPACT_FORMS.items()}
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps on what one message may use; exceeding one gives SipParseError with status 513."""

    max_message_size: int = 65536
    max_headers: int = 100
    max_line_length: int = 8192


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A CRLF keep-alive (RFC 5626 §3.5.1): `ping` (CRLFCRLF) wants a CRLF `pong` back."""

    ping: bool


@dataclass(frozen=True, slots=True)
class BadMessage:
    """A message on a stream could not be parsed. Non-fatal: it was skipped and parsing goes on."""

    error: SipParseError
    fatal: bool


StreamEvent = Request | Response | KeepAlive | BadMessage


@dataclass(slots=True)
class _Head:
    start: str
    pairs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_response(self) -> bool:
        return self.start[:4].upper() == "SIP/"

    def request_head(self) -> tuple[str, str, Headers] | None:
        if self.is_response:
            return None
        method, _, rest = self.start.partition(" ")
        return (method, rest.rpartition(" ")[0], Headers(tuple(self.pairs)))


def _parse_head(head: bytes, limits: Limits) -> _Head:
    """Split the head into the start line and unfolded `(canonical name, value)` pairs."""
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    result = _Head(lines[0].removesuffix("\r"))
    if len(result.start) > limits.max_line_length:
        raise SipParseError(f"start line longer than {limits.max_line_length} bytes", 513)
    if "\r" in result.start:
        raise SipParseError("bare CR inside the start line")
    pairs = result.pairs
    folds: dict[int, list[str]] = {}
    for raw in lines[1:]:
        line = raw.removesuffix("\r")
        if len(line) > limits.max_line_length:
            raise SipParseError(f"header line longer than {limits.max_line_length} bytes", 513)
        if "\r" in line:
            raise SipParseError("bare CR inside a header line")
        if line[:1] in (" ", "\t"):
            # §7.3.1: a line starting with whitespace continues the previous header field.
            if not pairs:
                raise SipParseError("continuation line before the first header")
            more = line.strip(" \t")
            if more:
                # Collected and joined once below: concatenating here would be quadratic.
                folds.setdefault(len(pairs) - 1, []).append(more)
            continue
        colon = line.find(":")
        if colon < 0:
            raise SipParseError(f"header line without colon: {line[:60]!r}")
        name = line[:colon].rstrip(" \t")  # HCOLON allows whitespace before the colon
        canon = _USUAL_NAMES.get(name)
        if canon is None:
            if not is_token(name):
                raise SipParseError(f"invalid header name {name[:60]!r}")
            canon = canonical_name(name)
        if len(pairs) >= limits.max_headers:
            raise SipParseError(f"more than {limits.max_headers} header fields", 513)
        pairs.append((canon, line[colon + 1 :].strip(" \t")))
    for index, parts in folds.items():
        name, value = pairs[index]
        pairs[index] = (name, " ".join([value, *parts]) if value else " ".join(parts))
    return result


def _content_length(head: _Head) -> int | None:
    values = [v for n, v in head.pairs if n == "Content-Length"]
    if not values:
        return None
    if len(values) > 1:
        # RFC 4475 §3.3.9: several Content-Length values make the framing ambiguous.
        raise SipParseError(f"{len(values)} Content-Length headers")
    return parse_uint(values[0], "Content-Length", 2**32 - 1)


def _finish(head: _Head, body: bytes) -> Request | Response:
    """Build and validate the message; errors on a request carry its head for a 400."""
    try:
        return _build(head, body)
    except SipParseError as err:
        request_head = head.request_head()
        raise err.with_head(request_head) if request_head is not None else err from None


def _build(head: _Head, body: bytes) -> Request | Response:
    items: list[tuple[str, str]] = []
    for name, value in head.pairs:
        if name == "Content-Length":
            continue  # framing only: `msg.content_length` is len(body), and bytes(msg) writes it
        if name in LIST_HEADERS:
            for part in split_list(value, name):
                if part:
                    items.append((name, part))
                elif name in STRICT_LIST_HEADERS:
                    raise SipParseError(f"empty element in {name}")
        else:
            items.append((name, value))
    headers = Headers(tuple(items))
    msg: Request | Response
    if head.is_response:
        version, _, rest = head.start.partition(" ")
        code, _, reason = rest.partition(" ")
        _check_version(version)
        if len(code) != 3 or not code.isdigit() or not code.isascii() or not 100 <= int(code) <= 699:
            raise SipParseError(f"invalid status code {code[:20]!r}")
        msg = Response(int(code), reason, headers, body)
    else:
        parts = head.start.split(" ")
        if len(parts) != 3:
            # §7.1: Method SP Request-URI SP SIP-Version, single spaces (RFC 4475 §3.1.2.8-10).
            raise SipParseError(f"malformed Request-Line {head.start[:80]!r}")
        method, uri_text, version = parts
        if not is_token(method):
            raise SipParseError(f"invalid method {method[:40]!r}")
        uri = parse_uri(uri_text)
        if isinstance(uri, SipUri) and uri.headers:
            # §19.1.1 table: headers are not allowed in a Request-URI (RFC 4475 §3.1.2.11).
            raise SipParseError("Request-URI must not contain headers")
        _check_version(version)
        msg = Request(method, uri, headers, body)
    _validate(msg)
    return msg


def _check_version(version: str) -> None:
    if version.upper() != "SIP/2.0":
        raise SipParseError(f"unsupported SIP version {version[:20]!r}", 505)


def _validate(msg: Request | Response) -> None:
    if not msg.vias:
        raise SipParseError("missing Via header")
    cseq = msg.cseq
    if isinstance(msg, Request) and cseq.method != msg.method:
        # §8.2: the CSeq method MUST match the request method (RFC 4475 §3.1.2.17-18).
        raise SipParseError(f"CSeq method {cseq.method!r} does not match {msg.method!r}")
    _ = (msg.call_id, msg.from_, msg.to, msg.contacts, msg.route, msg.record_route)
    _ = (msg.max_forwards, msg.expires, msg.content_type)


def parse_datagram_untrusted(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response | KeepAlive:
    """Parse one UDP datagram (RFC 3261 §18.3); raises only SipParseError."""
    if len(data) > limits.max_message_size:
        raise SipParseError(f"datagram of {len(data)} bytes exceeds {limits.max_message_size}", 513)
    stripped = data.lstrip(b"\r\n")
    if not stripped:
        if not data:
            raise SipParseError("empty datagram")
        return KeepAlive(ping=data.count(b"\n") >= 2)
    start = len(data) - len(stripped)
    m = _HEAD_END.search(data, start)
    if m is None:
        raise SipParseError("no empty line after the headers")
    head = _parse_head(data[start : m.start()], limits)
    body_start = m.end()
    available = len(data) - body_start
    try:
        length = _content_length(head)
        if length is not None and length > available:
            raise SipParseError(f"Content-Length {length} exceeds the {available} bytes after the headers")
    except SipParseError as err:
        request_head = head.request_head()
        raise err.with_head(request_head) if request_head is not None else err from None
    body = data[body_start:] if length is None else data[body_start : body_start + length]
    return _finish(head, body)


class StreamParser:
    """Frames SIP messages on a stream transport by Content-Length (RFC 3261 §18.3).

    Feed bytes with `feed()`, then call `next_event()` until it returns None. The search for
    the end of the headers resumes where it stopped, so feeding byte by byte stays linear.
    Keep-alives: CRLFCRLF is a ping; a CRLF followed by anything else, or ending the buffered
    bytes, is a pong, reported at once. When a ping is split across reads, its first CRLF is
    reported as a pong and its second as the ping, so a server still answers it.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._searched = 0
        self._head: _Head | None = None
        self._head_error: SipParseError | None = None
        self._body_start = 0
        self._body_length = 0
        self._lone_crlf = False
        self.broken = False

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed by an event."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append received bytes. Feeding after a fatal error is a LocalProtocolError."""
        if self.broken:
            raise LocalProtocolError("StreamParser fed after a fatal error; close the connection")
        self._buf += data

    def events(self) -> list[StreamEvent]:
        """All events the buffered bytes make (next_event until None)."""
        out: list[StreamEvent] = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out

    def next_event(self) -> StreamEvent | None:
        """The next message or event, or None when more bytes are needed."""
        if self.broken:
            return None
        buf = self._buf
        if self._head is None and self._head_error is None:
            if buf and buf[:1] not in _CRLF_BYTES:
                self._lone_crlf = False
            if buf[:1] in _CRLF_BYTES:
                keepalive = self._keepalive()
                if keepalive is not None or buf[:1] in _CRLF_BYTES:
                    return keepalive
            if not buf:
                return None
            waiting, fatal = self._read_head()
            if waiting or fatal is not None:
                return fatal
        end = self._body_start + self._body_length
        if len(buf) < end:
            return None
        body = bytes(buf[self._body_start : end])
        del buf[:end]
        self._searched = 0
        head, self._head = self._head, None
        error, self._head_error = self._head_error, None
        if head is None:
            assert error is not None
            return BadMessage(error, fatal=False)
        try:
            return _finish(head, body)
        except SipParseError as err:
            return BadMessage(err, fatal=False)

    def _read_head(self) -> tuple[bool, BadMessage | None]:
        """Find and parse the next head: (still waiting, fatal error or None)."""
        buf = self._buf
        m = _HEAD_END.search(buf, max(0, self._searched - 2))
        if m is None:
            self._searched = len(buf)
            if len(buf) > self._limits.max_message_size:
                return False, self._fatal(f"headers exceed {self._limits.max_message_size} bytes", 513)
            return True, None
        self._body_start = m.end()
        if m.start() > self._limits.max_message_size:
            return False, self._fatal(f"headers exceed {self._limits.max_message_size} bytes", 513)
        try:
            head = _parse_head(bytes(buf[: m.start()]), self._limits)
        except SipParseError as err:
            # Unreadable head: skip it and a body whose length we can still find.
            sniff = _CONTENT_LENGTH_SNIFF.search(buf, 0, m.start())
            self._head_error = err
            self._body_length = int(sniff.group(1)) if sniff else 0
        else:
            try:
                length = _content_length(head)
            except SipParseError as err:
                return False, self._fatal(f"cannot frame the stream: {err}", 400)
            if length is None:
                self._head_error = SipParseError("missing Content-Length on a stream transport (§18.3)")
                if (request_head := head.request_head()) is not None:
                    self._head_error = self._head_error.with_head(request_head)
                length = 0
            else:
                self._head = head
            self._body_length = length
        if self._body_start + self._body_length > self._limits.max_message_size:
            return False, self._fatal(f"message exceeds {self._limits.max_message_size} bytes", 513)
        return False, None

    def _keepalive(self) -> KeepAlive | None:
        buf = self._buf
        while buf[:1] in _CRLF_BYTES:
            if buf.startswith(b"\r\n\r\n"):
                del buf[:4]
                self._lone_crlf = False
                return KeepAlive(ping=True)
            if buf == b"\r" or buf == b"\r\n\r":
                return None  # wait: this may become a CRLF or a CRLFCRLF ping
            if buf.startswith(b"\r\n"):
                del buf[:2]
                # A CRLF that completes one reported as a pong at the end of the previous
                # read is the second half of a split ping (RFC 5626 §4.4.1 must answer it).
                ping, self._lone_crlf = self._lone_crlf, not buf and not self._lone_crlf
                return KeepAlive(ping=ping)
            del buf[:1]  # a lone CR or LF before a start line is ignored (§7.5)
            self._lone_crlf = False
        return None

    def _fatal(self, message: str, status: int) -> BadMessage:
        self.broken = True
        self._buf.clear()
        return BadMessage(SipParseError(message, status), fatal=True)
