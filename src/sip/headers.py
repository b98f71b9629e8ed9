"""SIP header fields: the `Headers` multi-map and typed header values (RFC 3261 §7.3, §20, §25.1).

Public API:

* `Headers` — an immutable, ordered multi-map of `(name, value)` pairs. Lookups are
  case-insensitive and accept compact forms (`headers.get("i")` is Call-ID). Names are stored in
  canonical spelling (`call-id` -> `Call-ID`, `v` -> `Via`); unknown names keep their spelling.
  `get`, `get_all`, `__contains__`, `add`, `prepend`, `replace`, `remove`.
* `canonical_name(name)`, `split_list(value, what)` (split on commas outside quotes and `<...>`).
* Typed values, each a frozen dataclass with `__str__` for serializing, and a parser raising only
  `SipParseError`: `NameAddr`/`parse_name_addr` (From, To, Contact, Route, Record-Route),
  `Via`/`parse_via`, `CSeq`/`parse_cseq`, `ContentType`/`parse_content_type`, `parse_uint`.

Header values are stored unfolded (RFC 3261 §7.3.1: folding is equivalent to one SP) and with
surrounding whitespace removed. Headers whose grammar is a comma-separated list (`LIST_HEADERS`)
are split by the parser into one entry per element, so `Via: a, b` becomes two Via entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import cast

from sip.errors import SipParseError
from sip.uri import EMPTY_PARAMS, TOKEN_CHARS, Params, Uri, is_token, parse_host, parse_port, parse_uri

# RFC 3261 §7.3.3 and the IANA registry of compact forms.
COMPACT_FORMS = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "x": "Session-Expires",
    "r": "Refer-To",
    "b": "Referred-By",
    "y": "Identity",
    "u": "Allow-Events",
}
_KNOWN = [
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Allow-Events",
    "Authentication-Info",
    "Authorization",
    "Call-ID",
    "Call-Info",
    "Contact",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "Date",
    "Error-Info",
    "Event",
    "Expires",
    "From",
    "Identity",
    "In-Reply-To",
    "Max-Forwards",
    "Min-Expires",
    "Min-SE",
    "MIME-Version",
    "Organization",
    "P-Asserted-Identity",
    "Path",
    "Priority",
    "Privacy",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "RAck",
    "Reason",
    "Record-Route",
    "Refer-To",
    "Referred-By",
    "Reply-To",
    "Require",
    "Retry-After",
    "Route",
    "RSeq",
    "Server",
    "Service-Route",
    "Session-Expires",
    "Subject",
    "Subscription-State",
    "Supported",
    "Timestamp",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Warning",
    "WWW-Authenticate",
]
KNOWN_HEADERS = tuple(_KNOWN)
_CANONICAL = {name.lower(): name for name in _KNOWN} | COMPACT_FORMS
_LOOKUP_KEYS = {lower: canon.lower() for lower, canon in _CANONICAL.items()}

# Headers whose grammar is `x *(COMMA x)`: split into one entry per element when parsed.
LIST_HEADERS = frozenset(
    [
        "Via",
        "Contact",
        "Route",
        "Record-Route",
        "Path",
        "Service-Route",
        "Allow",
        "Supported",
        "Require",
        "Proxy-Require",
        "Unsupported",
        "Allow-Events",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Content-Encoding",
        "Content-Language",
        "In-Reply-To",
        "Alert-Info",
        "Call-Info",
        "Error-Info",
        "P-Asserted-Identity",
    ]
)
# Lists of addresses or Vias: an empty element is an error, not something to skip (RFC 4475 §3.1.2.1).
STRICT_LIST_HEADERS = frozenset(["Via", "Contact", "Route", "Record-Route", "Path", "Service-Route"])

_COMMA_SPECIALS = re.compile(r'["<,]')
_SEMI_SPECIALS = re.compile(r'["<;]')
_QUOTED_TAIL = re.compile(r'(?:[^"\\]|\\.)*"', re.S)
_QUOTED_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)
_GEN_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_VIA_HEAD_RE = re.compile(
    rf"[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[^ \t:\[\]]+)(?:[ \t]*:[ \t]*([0-9]+))?[ \t]*"
)
_CSEQ_RE = re.compile(rf"[ \t]*([0-9]+)[ \t]+({_TOKEN})[ \t]*")
_MEDIA_RE = re.compile(rf"[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*")


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name (`call-id`, `i` -> `Call-ID`); unknown names as given."""
    return _CANONICAL.get(name.lower(), name)


def _lookup_key(name: str) -> str:
    """The lower-cased canonical name used for lookups (`I` -> `call-id`)."""
    lower = name.lower()
    return _LOOKUP_KEYS.get(lower, lower)


def split_top(value: str, sep: str, what: str) -> list[str]:
    """Split `value` on `sep` (`,` or `;`) outside quoted strings and `<...>`; parts not stripped."""
    specials = _COMMA_SPECIALS if sep == "," else _SEMI_SPECIALS
    if '"' not in value and "<" not in value:
        return value.split(sep)
    parts: list[str] = []
    start = pos = 0
    while (m := specials.search(value, pos)) is not None:
        i = m.start()
        match value[i]:
            case '"':
                q = _QUOTED_TAIL.match(value, i + 1)
                if q is None:
                    raise SipParseError(f"unterminated quoted string in {what}")
                pos = q.end()
            case "<":
                j = value.find(">", i + 1)
                if j < 0:
                    raise SipParseError(f"unterminated <...> in {what}")
                pos = j + 1
            case _:
                parts.append(value[start:i])
                start = pos = i + 1
    parts.append(value[start:])
    return parts


def split_list(value: str, what: str) -> list[str]:
    """Split a comma-separated header value into stripped elements (quotes and `<...>` respected)."""
    return [part.strip(" \t") for part in split_top(value, ",", what)]


def unquote(text: str) -> str:
    """Remove the quotes and quoted-pair backslashes of a quoted-string (or return a token as is)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return re.sub(r"\\(.)", r"\1", inner, flags=re.S) if "\\" in inner else inner
    return text


def quote(text: str) -> str:
    """Make a quoted-string of `text`, escaping `"` and `\\` (RFC 3261 §25.1 quoted-pair).

    CR and LF cannot appear in a quoted-string, even escaped: they become spaces.
    """
    text = text.replace("\r", " ").replace("\n", " ")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_header_params(parts: Iterable[str], what: str) -> Params:
    """Parse `name [= value]` header parameters (whitespace allowed around `=`, RFC 3261 §25.1)."""
    items: list[tuple[str, str | None]] = []
    for part in parts:
        name, eq, value = part.partition("=")
        name = name.strip(" \t")
        if not is_token(name):
            raise SipParseError(f"invalid parameter {part.strip()[:40]!r} in {what}")
        if not eq:
            items.append((name, None))
            continue
        value = value.strip(" \t")
        if value.startswith('"'):
            if _QUOTED_STRING.fullmatch(value) is None:
                raise SipParseError(f"bad quoted value in parameter {name!r} in {what}")
        elif _GEN_VALUE_RE.fullmatch(value) is None:
            raise SipParseError(f"invalid value of parameter {name!r} in {what}")
        items.append((name, value))
    return Params(tuple(items))


def parse_uint(value: str, what: str, maximum: int) -> int:
    """Parse `1*DIGIT` up to `maximum` (RFC 4475 §3.1.2.4: overlarge scalars are errors)."""
    text = value.strip(" \t")
    if not text.isdigit() or not text.isascii():
        raise SipParseError(f"{what} is not a number: {text[:40]!r}")
    if len(text.lstrip("0")) > len(str(maximum)) or int(text) > maximum:
        raise SipParseError(f"{what} too large: {text[:40]!r}")
    return int(text)


@dataclass(frozen=True, slots=True)
class Headers:
    """An ordered, immutable multi-map of header fields; names compare case-insensitively."""

    items: tuple[tuple[str, str], ...] = ()
    _index: dict[str, str | tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Values by lower-cased canonical name, built once: lookups are the parser's hot path. A
        # header that occurs once (most) maps to its value, not to a list of it: messages kept
        # for a call's life cost ~1 KiB less each (issue 6).
        single: dict[str, str] = {}
        multi: dict[str, list[str]] = {}
        for name, value in self.items:
            key = _lookup_key(name)
            if key not in single:
                single[key] = value
            elif key in multi:
                multi[key].append(value)
            else:
                multi[key] = [single[key], value]
        index = cast(dict[str, str | tuple[str, ...]], single)
        for key, values in multi.items():
            index[key] = tuple(values)
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        """Build from `(name, value)` pairs, canonicalizing names (compact forms expanded)."""
        return cls(tuple((canonical_name(n), v) for n, v in pairs))

    def get(self, name: str) -> str | None:
        """The first value of header `name`, or None."""
        values = self._index.get(_lookup_key(name))
        return values if values is None or isinstance(values, str) else values[0]

    def get_all(self, name: str) -> list[str]:
        """All values of header `name`, in order."""
        values = self._index.get(_lookup_key(name))
        if values is None:
            return []
        return [values] if isinstance(values, str) else list(values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, name: str, value: str) -> Headers:
        """A copy with `name: value` appended."""
        return Headers((*self.items, (canonical_name(name), value)))

    def prepend(self, name: str, value: str) -> Headers:
        """A copy with `name: value` inserted before all others (a proxy's new top Via)."""
        return Headers(((canonical_name(name), value), *self.items))

    def remove(self, name: str) -> Headers:
        """A copy without any `name` header."""
        key = _lookup_key(name)
        return Headers(tuple(item for item in self.items if _lookup_key(item[0]) != key))

    def replace(self, name: str, values: str | Iterable[str]) -> Headers:
        """A copy where the `name` headers are replaced by `values`, at the place of the first one."""
        canon = canonical_name(name)
        key = _lookup_key(name)
        new = [(canon, values)] if isinstance(values, str) else [(canon, v) for v in values]
        out: list[tuple[str, str]] = []
        placed = False
        for n, v in self.items:
            if _lookup_key(n) == key:
                if not placed:
                    out.extend(new)
                    placed = True
            else:
                out.append((n, v))
        if not placed:
            out.extend(new)
        return Headers(tuple(out))


@dataclass(frozen=True, slots=True)
class NameAddr:
    """`[display-name] <URI> *(;param)` of From, To, Contact, Route and Record-Route (§20.10)."""

    uri: Uri
    display_name: str | None = None
    params: Params = EMPTY_PARAMS

    @property
    def tag(self) -> str | None:
        """The `tag` parameter (From/To, RFC 3261 §19.3), or None."""
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        """The Contact `expires` parameter, or None (also when it is not a number)."""
        value = self.params.get("expires")
        if value is None or not value.isdigit() or not value.isascii() or len(value) > 10:
            return None
        return int(value)

    def with_tag(self, tag: str) -> NameAddr:
        """A copy with `;tag=<tag>` set."""
        return NameAddr(self.uri, self.display_name, self.params.set("tag", tag))

    def __str__(self) -> str:
        # Always the name-addr form: an addr-spec with `;`, `,` or `?` would be ambiguous (§20).
        display = quote(self.display_name) + " " if self.display_name is not None else ""
        return f"{display}<{self.uri}>{self.params}"


def parse_name_addr(value: str, what: str) -> NameAddr:
    """Parse `name-addr / addr-spec` followed by header parameters (RFC 3261 §20.10, §25.1)."""
    s = value.strip(" \t")
    if not s:
        raise SipParseError(f"empty address in {what}")
    display: str | None = None
    if s[0] == '"':
        m = _QUOTED_STRING.match(s)
        if m is None:
            raise SipParseError(f"unterminated quoted display name in {what}")
        display = unquote(m.group(0))
        rest = s[m.end() :].lstrip(" \t")
        if not rest.startswith("<"):
            raise SipParseError(f"expected <URI> after the display name in {what}")
    else:
        lt = s.find("<")
        if lt < 0:
            return _parse_addr_spec(s, what)
        words = s[:lt].strip(" \t")
        for ch in words:
            if ch not in TOKEN_CHARS and ch not in " \t" and ord(ch) < 0x80:
                raise SipParseError(f"invalid character {ch!r} in unquoted display name in {what}")
        display = words or None
        rest = s[lt:]
    gt = rest.find(">")
    if gt < 0:
        raise SipParseError(f"unterminated <URI> in {what}")
    inner = rest[1:gt]
    if not inner or inner != inner.strip(" \t"):
        # RFC 4475 §3.1.2.14: LAQUOT/RAQUOT allow no whitespace inside the brackets.
        raise SipParseError(f"whitespace inside <URI> in {what}")
    uri = parse_uri(inner)
    tail = rest[gt + 1 :].strip(" \t")
    params = Params()
    if tail:
        if tail[0] != ";":
            raise SipParseError(f"junk after <URI> in {what}: {tail[:40]!r}")
        params = parse_header_params(split_top(tail[1:], ";", what), what)
    return NameAddr(uri, display, params)


def _parse_addr_spec(s: str, what: str) -> NameAddr:
    # §20: without <>, parameters after the URI belong to the header, and a URI containing
    # `,`, `?` or `;` MUST be enclosed in <> (RFC 4475 §3.1.2.13).
    semi = s.find(";")
    text = (s if semi < 0 else s[:semi]).rstrip(" \t")
    for ch in " \t,?":
        if ch in text:
            raise SipParseError(f"URI with {ch!r} must be enclosed in <> in {what}")
    uri = parse_uri(text)
    params = Params()
    if semi >= 0:
        params = parse_header_params(s[semi + 1 :].split(";"), what)
    return NameAddr(uri, None, params)


@dataclass(frozen=True, slots=True)
class Via:
    """One Via header value (RFC 3261 §20.42, §18.2.1, RFC 3581 rport)."""

    transport: str
    host: str
    port: int | None = None
    params: Params = EMPTY_PARAMS
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        """The `branch` parameter (the transaction id when it starts with z9hG4bK, §8.1.1.7)."""
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        """The `received` parameter (§18.2.1), or None."""
        return self.params.get("received")

    @property
    def has_rport(self) -> bool:
        """True when an `rport` parameter is present, with or without value (RFC 3581)."""
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The `rport` value, or None when absent or valueless."""
        value = self.params.get("rport")
        return int(value) if value is not None and value.isdigit() and len(value) <= 5 else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """`(host, port)` as sent (for the server-transaction key, §17.2.3)."""
        return (self.host.lower(), self.port)

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with a parameter set (e.g. `received` and `rport` by a server, §18.2.1)."""
        return Via(self.transport, self.host, self.port, self.params.set(name, value), self.protocol)

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{self.params}"


def parse_via(value: str, what: str = "Via") -> Via:
    """Parse one Via value: `SIP / 2.0 / UDP host[:port] *(;param)` with SWS allowed (§25.1)."""
    parts = split_top(value, ";", what)
    m = _VIA_HEAD_RE.fullmatch(parts[0])
    if m is None:
        raise SipParseError(f"malformed {what}: {value.strip()[:60]!r}")
    name, version, transport, host, port = m.groups()
    parse_host(host, what)
    params = parse_header_params(parts[1:], what)
    rport = params.get("rport")
    if rport is not None:
        parse_port(rport, f"{what} rport")
    return Via(
        transport.upper(),
        host,
        parse_port(port, what) if port is not None else None,
        params,
        f"{name.upper()}/{version}",
    )


@dataclass(frozen=True, slots=True)
class CSeq:
    """`CSeq: <seq> <method>` (RFC 3261 §20.16; seq < 2**31, §8.1.1.5)."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    """Parse a CSeq value; the number must be below 2**31 (§8.1.1.5)."""
    m = _CSEQ_RE.fullmatch(value)
    if m is None:
        raise SipParseError(f"malformed CSeq: {value.strip()[:60]!r}")
    return CSeq(parse_uint(m.group(1), "CSeq number", 2**31 - 1), m.group(2))


@dataclass(frozen=True, slots=True)
class ContentType:
    """`type/subtype *(;param)` (RFC 3261 §20.15)."""

    type: str
    subtype: str
    params: Params = EMPTY_PARAMS

    @property
    def media_type(self) -> str:
        """`type/subtype`, lower-cased, for comparisons (`application/sdp`)."""
        return f"{self.type}/{self.subtype}".lower()

    def __str__(self) -> str:
        return f"{self.type}/{self.subtype}{self.params}"


def parse_content_type(value: str) -> ContentType:
    """Parse a Content-Type value."""
    parts = split_top(value, ";", "Content-Type")
    m = _MEDIA_RE.fullmatch(parts[0])
    if m is None:
        raise SipParseError(f"malformed Content-Type: {value.strip()[:60]!r}")
    return ContentType(m.group(1), m.group(2), parse_header_params(parts[1:], "Content-Type"))
