"""SIP and SIPS URIs (RFC 3261 §19.1) and other absolute URIs, plus `;name=value` parameters.

Public API:

* `Params` — an ordered, case-insensitive list of `name[=value]` parameters (URI, Via and
  header parameters). `params.get("tag")`, `"lr" in params`, `params.set("tag", "x")`.
* `SipUri(scheme, user, password, host, port, params, headers)` — `str(uri)` serializes.
* `AbsoluteUri(scheme, opaque)` — any other scheme (`tel:`, `http:`, `urn:`...), kept opaque.
* `parse_uri(text) -> SipUri | AbsoluteUri` and `parse_sip_uri(text) -> SipUri`; both raise only
  `SipParseError`.

Values are kept as written (escapes are not decoded), so that serializing gives back the input;
`unescape()` decodes `%HH` when a caller needs the decoded form.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from sip.errors import SipParseError

TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# user / telephone-subscriber: unreserved, escaped and user-unreserved (RFC 3261 §25.1)
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/]+")
_PASSWORD_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,]*")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9\-_.]*[A-Za-z0-9_.])?")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
# paramchar = param-unreserved / unreserved / escaped
_PARAMCHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]*")
# hname/hvalue: hnv-unreserved / unreserved / escaped
_HCHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/?:+$]*")
_OPAQUE_RE = re.compile(r"[\x21-\x7e]+")
_HEX = "0123456789abcdefABCDEF"


def is_token(text: str) -> bool:
    """True when `text` is a non-empty RFC 3261 `token`."""
    return _TOKEN_RE.fullmatch(text) is not None


def unescape(text: str) -> str:
    """Decode `%HH` escapes (RFC 3261 §19.1.2); an invalid escape is left as written."""
    if "%" not in text:
        return text
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Params:
    """Ordered `;name[=value]` parameters; names compare case-insensitively.

    A parameter without a value (`;lr`) has the value None. Values are stored as written
    (a quoted-string keeps its quotes).
    """

    items: tuple[tuple[str, str | None], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first parameter called `name`, else `default` (also for `;lr`)."""
        key = name.lower()
        for n, v in self.items:
            if n.lower() == key:
                return v if v is not None else default
        return default

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(n.lower() == key for n, _ in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def set(self, name: str, value: str | None = None) -> Params:
        """A copy with `name` set to `value` (replacing the first one of that name, else appended)."""
        key = name.lower()
        out: list[tuple[str, str | None]] = []
        done = False
        for n, v in self.items:
            if n.lower() == key:
                if not done:
                    out.append((n, value))
                    done = True
            else:
                out.append((n, v))
        if not done:
            out.append((name, value))
        return Params(tuple(out))

    def remove(self, name: str) -> Params:
        """A copy without any parameter called `name`."""
        key = name.lower()
        return Params(tuple((n, v) for n, v in self.items if n.lower() != key))

    def __str__(self) -> str:
        if not self.items:
            return ""
        return "".join([f";{n}" if v is None else f";{n}={v}" for n, v in self.items])


EMPTY_PARAMS = Params()


def parse_uri_params(text: str, what: str) -> Params:
    """Parse `;a=b;c` as found inside a URI (no whitespace allowed, RFC 3261 §19.1.1)."""
    if not text:
        return EMPTY_PARAMS
    items: list[tuple[str, str | None]] = []
    for part in text.split(";")[1:]:
        name, eq, value = part.partition("=")
        if not name or _PARAMCHARS_RE.fullmatch(name) is None:
            raise SipParseError(f"invalid parameter {part!r} in {what}")
        if _PARAMCHARS_RE.fullmatch(value) is None:
            raise SipParseError(f"invalid value in parameter {part!r} in {what}")
        items.append((name, value if eq else None))
    return Params(tuple(items))


@dataclass(frozen=True, slots=True)
class SipUri:
    """A `sip:` or `sips:` URI (RFC 3261 §19.1.1). `host` keeps IPv6 brackets: `[::1]`."""

    host: str
    user: str | None = None
    port: int | None = None
    params: Params = EMPTY_PARAMS
    headers: tuple[tuple[str, str], ...] = ()
    password: str | None = None
    scheme: str = "sip"

    @property
    def transport(self) -> str | None:
        """The `transport` URI parameter, lower-cased, or None."""
        value = self.params.get("transport")
        return value.lower() if value else None

    @property
    def host_no_brackets(self) -> str:
        """The host without IPv6 brackets, as a socket API wants it."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    def with_params(self, params: Params) -> SipUri:
        """A copy with other parameters."""
        return SipUri(self.host, self.user, self.port, params, self.headers, self.password, self.scheme)

    def without_headers(self) -> SipUri:
        """A copy without `?headers` (e.g. for a Request-URI built from a Contact, §19.1.5)."""
        return SipUri(self.host, self.user, self.port, self.params, (), self.password, self.scheme)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        out.append(str(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(out)


@dataclass(frozen=True, slots=True)
class AbsoluteUri:
    """A URI of a scheme other than sip/sips, kept opaque (RFC 3261 §25.1 absoluteURI)."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"


Uri = SipUri | AbsoluteUri


def parse_host(text: str, what: str) -> str:
    """Validate a host (hostname, IPv4 address or bracketed IPv6 reference) and return it."""
    if _HOSTNAME_RE.fullmatch(text) is None and _IPV6_RE.fullmatch(text) is None:
        raise SipParseError(f"invalid host {text!r} in {what}")
    return text


def parse_port(text: str, what: str) -> int:
    """Parse a port number 0-65535 (RFC 3261 §25.1 `port = 1*DIGIT`, bounded by UDP/TCP)."""
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > 65535:
        raise SipParseError(f"invalid port {text!r} in {what}")
    return int(text)


def parse_sip_uri(text: str) -> SipUri:
    """Parse a `sip:`/`sips:` URI; anything else raises SipParseError."""
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise SipParseError(f"expected a sip: or sips: URI, got {text!r}", 416)
    return uri


# The same few URIs (the phone's, the bridge's, the proxy's) come in every message of every call:
# parsed values are immutable, so a small cache of recent ones answers most lookups. Errors are
# not cached (each raises again); long texts are not cached at all.
URI_CACHE_SIZE = 512
URI_CACHE_MAX_LENGTH = 256


def parse_uri(text: str) -> Uri:
    """Parse a URI as found in a Request-URI or inside `<...>` (RFC 3261 §19.1, §25.1)."""
    if len(text) <= URI_CACHE_MAX_LENGTH:
        return _parse_uri_cached(text)
    return _parse_uri(text)


@functools.lru_cache(maxsize=URI_CACHE_SIZE)
def _parse_uri_cached(text: str) -> Uri:
    return _parse_uri(text)


def _parse_uri(text: str) -> Uri:
    colon = text.find(":")
    if colon <= 0 or _SCHEME_RE.fullmatch(text, 0, colon) is None:
        raise SipParseError(f"URI {text[:80]!r} has no valid scheme")
    scheme = text[:colon].lower()
    rest = text[colon + 1 :]
    if scheme not in ("sip", "sips"):
        if _OPAQUE_RE.fullmatch(rest) is None:
            raise SipParseError(f"invalid characters in URI {text[:80]!r}")
        return AbsoluteUri(scheme, rest)
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, sep, pw = userinfo.partition(":")
        if _USER_RE.fullmatch(user) is None:
            raise SipParseError(f"invalid user part in URI {text[:80]!r}")
        if sep:
            if _PASSWORD_RE.fullmatch(pw) is None:
                raise SipParseError(f"invalid password in URI {text[:80]!r}")
            password = pw
    headers: tuple[tuple[str, str], ...] = ()
    q = rest.find("?")
    if q >= 0:
        headers = _parse_uri_headers(rest[q + 1 :], text)
        rest = rest[:q]
    semi = rest.find(";")
    params = Params()
    if semi >= 0:
        params = parse_uri_params(rest[semi:], f"URI {text[:80]!r}")
        rest = rest[:semi]
    port: int | None = None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in URI {text[:80]!r}")
        host, portpart = rest[: end + 1], rest[end + 1 :]
        if portpart:
            if not portpart.startswith(":"):
                raise SipParseError(f"junk after IPv6 reference in URI {text[:80]!r}")
            port = parse_port(portpart[1:], f"URI {text[:80]!r}")
    else:
        host, sep, portpart = rest.partition(":")
        if sep:
            port = parse_port(portpart, f"URI {text[:80]!r}")
    if not host:
        raise SipParseError(f"URI {text[:80]!r} has no host")
    parse_host(host, f"URI {text[:80]!r}")
    return SipUri(host, user, port, params, headers, password, scheme)


def _parse_uri_headers(text: str, uri: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for part in text.split("&"):
        name, eq, value = part.partition("=")
        if not name or not eq or _HCHARS_RE.fullmatch(name) is None or _HCHARS_RE.fullmatch(value) is None:
            raise SipParseError(f"invalid header {part[:40]!r} in URI {uri[:80]!r}")
        out.append((name, value))
    return tuple(out)
