"""SIP messages: `Request`, `Response`, typed accessors, builders and the serializer (RFC 3261 §7, §8).

Public API:

* `Request(method, uri, headers, body=b"")` and `Response(status, reason, headers, body=b"")`:
  frozen dataclasses. `bytes(msg)` serializes with CRLF line ends and always writes a correct
  `Content-Length` (the stored one, if any, is replaced by `len(body)`); a CR or LF inside a
  built value raises `LocalProtocolError` instead of injecting header fields.
* Typed accessors on both (parsed on first access and memoized; `sip.parser` validates them
  when a message arrives, so on a received message they do not raise): `call_id`, `cseq`,
  `from_`, `to`, `vias`, `top_via`, `contacts`, `contact_is_star`, `record_route`, `route`,
  `content_type`, `max_forwards`, `expires`, `content_length`. Missing or malformed values
  raise `SipParseError`. `msg.with_top_via(via)` replaces the top Via (received/rport).
* `make_request(...)`, `make_response(request, status, ...)` build well-formed messages;
  `error_response(err)` builds a stateless error answer from a `SipParseError.head`.
* `REASON_PHRASES`, `reason_phrase(status)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Self, TypeVar, cast

from sip.errors import LocalProtocolError, SipParseError
from sip.headers import (
    ContentType,
    CSeq,
    Headers,
    NameAddr,
    Via,
    parse_content_type,
    parse_cseq,
    parse_name_addr,
    parse_uint,
    parse_via,
)
from sip.uri import Uri

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}


_T = TypeVar("_T")


def reason_phrase(status: int) -> str:
    """The usual reason phrase of `status` (or a generic one for its class)."""
    return REASON_PHRASES.get(status) or REASON_PHRASES.get(status - status % 100, "Unknown")


class _Accessors:
    """Typed header accessors shared by Request and Response."""

    __slots__ = ()
    headers: Headers
    body: bytes
    _memo: dict[str, object]

    def _cached(self, key: str, compute: Callable[[], _T]) -> _T:
        """Parse a header value once per message (messages are immutable)."""
        memo = self._memo
        if key in memo:
            return cast(_T, memo[key])
        value = compute()
        memo[key] = value
        return value

    def _single(self, name: str) -> str:
        values = self.headers.get_all(name)
        if not values:
            raise SipParseError(f"missing {name} header")
        if len(values) > 1:
            # RFC 4475 §3.3.8: several values in a single-value header field.
            raise SipParseError(f"{len(values)} {name} headers where one is allowed")
        return values[0]

    @property
    def call_id(self) -> str:
        """The Call-ID (§20.8)."""
        value = self._single("Call-ID")
        if not value or " " in value or "\t" in value:
            raise SipParseError(f"invalid Call-ID {value[:60]!r}")
        return value

    @property
    def cseq(self) -> CSeq:
        """The CSeq (§20.16)."""
        return self._cached("cseq", lambda: parse_cseq(self._single("CSeq")))

    @property
    def from_(self) -> NameAddr:
        """The From address (§20.20)."""
        return self._cached("from", lambda: parse_name_addr(self._single("From"), "From"))

    @property
    def to(self) -> NameAddr:
        """The To address (§20.39)."""
        return self._cached("to", lambda: parse_name_addr(self._single("To"), "To"))

    @property
    def vias(self) -> list[Via]:
        """All Via values, top first (§20.42)."""
        return list(self._cached("vias", lambda: tuple(parse_via(v) for v in self.headers.get_all("Via"))))

    @property
    def top_via(self) -> Via:
        """The top-most Via; SipParseError when there is none."""
        vias = self._cached("vias", lambda: tuple(parse_via(v) for v in self.headers.get_all("Via")))
        if not vias:
            raise SipParseError("missing Via header")
        return vias[0]

    @property
    def contact_is_star(self) -> bool:
        """True for `Contact: *` (REGISTER removing all bindings, §10.2.2)."""
        values = self.headers.get_all("Contact")
        return len(values) == 1 and values[0] == "*"

    @property
    def contacts(self) -> list[NameAddr]:
        """All Contact addresses (empty for `Contact: *`, see `contact_is_star`)."""
        values = self.headers.get_all("Contact")
        if "*" in values:
            if len(values) > 1:
                raise SipParseError("Contact: * combined with other Contact values")
            return []
        return list(self._cached("contacts", lambda: tuple(parse_name_addr(v, "Contact") for v in values)))

    @property
    def record_route(self) -> list[NameAddr]:
        """Record-Route values in message order (§20.30)."""
        values = self.headers.get_all("Record-Route")
        return list(self._cached("rr", lambda: tuple(parse_name_addr(v, "Record-Route") for v in values)))

    @property
    def route(self) -> list[NameAddr]:
        """Route values in message order (§20.34)."""
        values = self.headers.get_all("Route")
        return list(self._cached("route", lambda: tuple(parse_name_addr(v, "Route") for v in values)))

    @property
    def content_type(self) -> ContentType | None:
        """The Content-Type, or None when absent."""
        values = self.headers.get_all("Content-Type")
        return parse_content_type(self._single("Content-Type")) if values else None

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255, §20.22), or None when absent."""
        if "Max-Forwards" not in self.headers:
            return None
        return parse_uint(self._single("Max-Forwards"), "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        """The Expires header in seconds (§20.19), or None when absent."""
        if "Expires" not in self.headers:
            return None
        return parse_uint(self._single("Expires"), "Expires", 2**32 - 1)

    def with_top_via(self, via: Via) -> Self:
        """A copy whose top Via is `via` (a transport adding received/rport, §18.2.1)."""
        items = list(self.headers.items)
        for i, (name, _) in enumerate(items):
            if name.lower() in ("via", "v"):
                items[i] = ("Via", str(via))
                break
        else:
            items.insert(0, ("Via", str(via)))
        return replace(self, headers=Headers(tuple(items)))  # type: ignore[type-var]

    @property
    def content_length(self) -> int:
        """The body length (the serializer always writes this as Content-Length)."""
        return len(self.body)


def _serialize(start: str, headers: Headers, body: bytes) -> bytes:
    lines = [start]
    length_written = False
    for name, value in headers.items:
        if name.lower() in ("content-length", "l"):
            if length_written:
                continue
            lines.append(f"Content-Length: {len(body)}")
            length_written = True
        else:
            lines.append(f"{name}: {value}")
    if not length_written:
        lines.append(f"Content-Length: {len(body)}")
    for line in lines:
        if "\n" in line or "\r" in line:
            # A CR or LF in a value would inject header fields (e.g. from a display name).
            raise LocalProtocolError(f"CR or LF inside a header or start line: {line[:60]!r}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


@dataclass(frozen=True, slots=True)
class Request(_Accessors):
    """A SIP request (§7.1). `uri` is the Request-URI."""

    method: str
    uri: Uri
    headers: Headers
    body: bytes = b""
    _memo: dict[str, object] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __bytes__(self) -> bytes:
        return _serialize(f"{self.method} {self.uri} SIP/2.0", self.headers, self.body)


@dataclass(frozen=True, slots=True)
class Response(_Accessors):
    """A SIP response (§7.2)."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    _memo: dict[str, object] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __bytes__(self) -> bytes:
        return _serialize(f"SIP/2.0 {self.status} {self.reason}", self.headers, self.body)


Message = Request | Response


def make_request(
    method: str,
    uri: Uri,
    *,
    call_id: str,
    cseq: int,
    from_: NameAddr,
    to: NameAddr,
    via: Via | Sequence[Via],
    max_forwards: int = 70,
    contact: NameAddr | None = None,
    route: Sequence[NameAddr] = (),
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """Build a request with the mandatory headers of §8.1.1 in the usual order.

    `headers` are extra `(name, value)` pairs placed after Contact. The CSeq method is `method`
    (ACK and CANCEL callers pass the INVITE's number, §17.1.1.3, §9.1).
    """
    vias = [via] if isinstance(via, Via) else list(via)
    pairs: list[tuple[str, str]] = [("Via", str(v)) for v in vias]
    pairs.append(("Max-Forwards", str(max_forwards)))
    pairs.extend(("Route", str(r)) for r in route)
    pairs += [("From", str(from_)), ("To", str(to)), ("Call-ID", call_id), ("CSeq", f"{cseq} {method}")]
    if contact is not None:
        pairs.append(("Contact", str(contact)))
    pairs.extend(headers)
    if content_type is not None:
        pairs.append(("Content-Type", content_type))
    return Request(method, uri, Headers.from_pairs(pairs), body)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    contact: NameAddr | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """Build a response to `request` (§8.2.6).

    Via (all values, in order), From, To, Call-ID and CSeq are copied; `to_tag` is added to To
    unless it already has one (§8.2.6.2; not on 100 Trying, §8.2.6.1, which also copies Timestamp).
    Record-Route is copied into 101-299 responses, which may create a dialog (§12.1.1).
    """
    req = request.headers
    pairs: list[tuple[str, str]] = [("Via", v) for v in req.get_all("Via")]
    pairs.append(("From", req.get("From") or ""))
    to_value = req.get("To") or ""
    if to_tag is not None and status != 100:
        to = parse_name_addr(to_value, "To")
        if to.tag is None:
            to_value = str(to.with_tag(to_tag))
    pairs += [("To", to_value), ("Call-ID", req.get("Call-ID") or ""), ("CSeq", req.get("CSeq") or "")]
    if status == 100 and "Timestamp" in req:
        pairs.append(("Timestamp", req.get("Timestamp") or ""))
    if 100 < status < 300:
        pairs.extend(("Record-Route", v) for v in req.get_all("Record-Route"))
    if contact is not None:
        pairs.append(("Contact", str(contact)))
    pairs.extend(headers)
    if content_type is not None:
        pairs.append(("Content-Type", content_type))
    return Response(status, reason or reason_phrase(status), Headers.from_pairs(pairs), body)


def error_response(err: SipParseError, to_tag: str | None = None) -> Response | None:
    """A stateless answer (status `err.status_hint`) to a request that failed to parse.

    Uses the raw Via/From/To/Call-ID/CSeq of `err.head`; None when the head was unreadable,
    lacks a parsable top Via (nowhere to send it, §18.2.2) or the bad message was an ACK (never
    answered).
    """
    if err.head is None:
        return None
    method, _uri, headers = err.head
    top_via = headers.get("Via")
    if method == "ACK" or top_via is None:
        return None
    try:
        parse_via(top_via)
    except SipParseError:
        return None  # no usable top Via: the answer could not be routed (§18.2.2)
    pairs: list[tuple[str, str]] = [("Via", v) for v in headers.get_all("Via")]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = headers.get(name)
        if value is not None:
            if name == "To" and to_tag is not None and ";tag=" not in value.replace(" ", "").lower():
                value = f"{value};tag={to_tag}"
            pairs.append((name, value))
    reason = reason_phrase(err.status_hint)
    body = str(err).encode("utf-8", "surrogateescape")[:200]
    pairs.append(("Content-Type", "text/plain"))
    return Response(err.status_hint, reason, Headers.from_pairs(pairs), body)
