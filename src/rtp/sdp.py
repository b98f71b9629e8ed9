"""SDP (RFC 8866, formerly RFC 4566): parsing into frozen dataclasses, and serializing.

`SessionDescription.parse_untrusted(text)` accepts what browsers and SIP peers send and raises only
`SdpParseError`, with the line number and what was wrong. It enforces the grammar that matters for
offer/answer (RFC 8866 §5): `v=0` first, then `o=` and `s=`; one-letter types; session-level-only
types (`v o s u e p t r z`) before the first `m=`; numeric ports and payload types; caps on size,
line count and media sections. CRLF is the line end, but a bare LF is accepted (§5: parsers SHOULD
be tolerant). Unknown attributes are kept verbatim, so `serialize()` round-trips them.

The attribute helpers (`rtpmaps`, `fmtp`, `candidates`, `fingerprint`, `direction`...) interpret
the attributes the offer/answer code (`rtp.sdp_answer`) needs: RFC 8866 §6 (rtpmap, fmtp, ptime,
direction), RFC 8839 (ICE candidate, ufrag, pwd, ice-lite), RFC 8122 (fingerprint, setup),
RFC 5888 (group, mid), RFC 5761 (rtcp-mux), RFC 3605 (rtcp).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from rtp.errors import SdpParseError

__all__ = [
    "Attribute",
    "Candidate",
    "Connection",
    "Direction",
    "Fingerprint",
    "Media",
    "Origin",
    "RtpMap",
    "SessionDescription",
]

MAX_SDP_BYTES = 65536
MAX_LINES = 4096
MAX_MEDIA = 32

_SESSION_ONLY = frozenset("vosuepzrt")
_MEDIA_LEVEL = frozenset("icbka")
_KNOWN = _SESSION_ONLY | _MEDIA_LEVEL | {"m"}
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
# Attribute names browsers and phones send in every description (all tokens): no regex for them.
_USUAL_ATTRIBUTES = frozenset(
    [
        "candidate",
        "end-of-candidates",
        "extmap",
        "extmap-allow-mixed",
        "fingerprint",
        "fmtp",
        "group",
        "ice-lite",
        "ice-options",
        "ice-pwd",
        "ice-ufrag",
        "inactive",
        "maxptime",
        "mid",
        "msid",
        "msid-semantic",
        "ptime",
        "recvonly",
        "rtcp",
        "rtcp-fb",
        "rtcp-mux",
        "rtcp-rsize",
        "rtpmap",
        "sendonly",
        "sendrecv",
        "setup",
        "ssrc",
        "ssrc-group",
    ]
)


class Direction(enum.Enum):
    """Media direction attributes (RFC 8866 §6.7, RFC 3264 §6.1)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    def reversed(self) -> Direction:
        """The direction an answerer mirrors (sendonly <-> recvonly), RFC 3264 §6.1."""
        match self:
            case Direction.SENDONLY:
                return Direction.RECVONLY
            case Direction.RECVONLY:
                return Direction.SENDONLY
            case Direction.SENDRECV | Direction.INACTIVE:
                return self

    @property
    def sends(self) -> bool:
        """Whether the side that wrote this direction sends media."""
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        """Whether the side that wrote this direction receives media."""
        return self in (Direction.SENDRECV, Direction.RECVONLY)


@dataclass(frozen=True, slots=True)
class Origin:
    """`o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>` (§5.2)."""

    username: str
    session_id: str
    session_version: str
    address: str
    nettype: str = "IN"
    addrtype: str = "IP4"

    def serialize(self) -> str:
        """The value of the `o=` line."""
        return " ".join(
            (self.username, self.session_id, self.session_version, self.nettype, self.addrtype, self.address)
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """`c=<nettype> <addrtype> <connection-address>` (§5.7)."""

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    def serialize(self) -> str:
        """The value of the `c=` line."""
        return f"{self.nettype} {self.addrtype} {self.address}"

    @property
    def is_null(self) -> bool:
        """0.0.0.0: the RFC 2543 way of putting a stream on hold (RFC 3264 §8.4)."""
        return self.address in ("0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class Attribute:
    """`a=<name>[:<value>]` (§5.13); `value` is None for a property attribute."""

    name: str
    value: str | None = None

    def serialize(self) -> str:
        """The value of the `a=` line."""
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass(frozen=True, slots=True)
class RtpMap:
    """`a=rtpmap:<pt> <encoding>/<clock>[/<channels>]` (§6.6)."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """`a=fingerprint:<hash-func> <hex:hex:...>` (RFC 8122 §5); value normalized to upper case."""

    algorithm: str
    value: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """An ICE candidate (RFC 8839 §5.1). `extensions` keeps the trailing name/value pairs."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse_untrusted(cls, value: str) -> Candidate:
        """Parse the value of an `a=candidate:` attribute; raises only `SdpParseError`."""
        parts = value.split()
        if len(parts) < 8 or parts[6] != "typ":
            raise SdpParseError(f"ICE candidate needs 8 fields with 'typ': {value!r}")
        foundation, component, transport, priority, address, port = parts[:6]
        if not _ICE_CHARS.fullmatch(foundation) or len(foundation) > 32:
            raise SdpParseError(f"ICE candidate foundation {foundation!r} invalid")
        comp = _int(component, "candidate component", 1, 256)
        prio = _int(priority, "candidate priority", 0, 2**32 - 1)
        cport = _int(port, "candidate port", 0, 65535)
        if len(parts) % 2:
            raise SdpParseError(f"ICE candidate extension without a value: {value!r}")
        raddr: str | None = None
        rport: int | None = None
        ext: list[tuple[str, str]] = []
        for name, val in zip(parts[8::2], parts[9::2], strict=True):
            if name == "raddr":
                raddr = val
            elif name == "rport":
                rport = _int(val, "candidate rport", 0, 65535)
            else:
                ext.append((name, val))
        return cls(foundation, comp, transport, prio, address, cport, parts[7], raddr, rport, tuple(ext))

    def serialize(self) -> str:
        """The value of the `a=candidate:` attribute."""
        out = (
            f"{self.foundation} {self.component} {self.transport} {self.priority} "
            f"{self.address} {self.port} typ {self.type}"
        )
        if self.related_address is not None:
            out += f" raddr {self.related_address}"
        if self.related_port is not None:
            out += f" rport {self.related_port}"
        for name, val in self.extensions:
            out += f" {name} {val}"
        return out


def _int(text: str, what: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise SdpParseError(f"{what} {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise SdpParseError(f"{what} {value} out of range {low}-{high}")
    return value


class _AttributeHolder:
    """Attribute lookups shared by the session and media levels."""

    __slots__ = ()
    attributes: tuple[Attribute, ...]

    def attribute(self, name: str) -> str | None:
        """The value of the first `a=name:value` (stripped), '' for a property, None if absent."""
        for a in self.attributes:
            if a.name == name:
                return "" if a.value is None else a.value.strip()
        return None

    def attribute_values(self, name: str) -> list[str]:
        """The values of every `a=name:value`, stripped."""
        return [(a.value or "").strip() for a in self.attributes if a.name == name]

    def has(self, name: str) -> bool:
        """Whether the attribute is present."""
        return any(a.name == name for a in self.attributes)

    def direction(self) -> Direction | None:
        """The direction attribute at this level, None if there is none."""
        for a in self.attributes:
            if a.value is None:
                try:
                    return Direction(a.name)
                except ValueError:
                    continue
        return None

    def fingerprint(self) -> Fingerprint | None:
        """The first `a=fingerprint` (RFC 8122 §5), validated."""
        value = self.attribute("fingerprint")
        if value is None:
            return None
        algorithm, _, hexes = value.partition(" ")
        hexes = hexes.strip()
        if not algorithm or not _FINGERPRINT.fullmatch(hexes):
            raise SdpParseError(f"a=fingerprint value {value!r} is not '<hash> XX:XX:...'")
        return Fingerprint(algorithm.lower(), hexes.upper())


@dataclass(frozen=True, slots=True)
class Media(_AttributeHolder):
    """One media description: `m=<media> <port>[/<count>] <proto> <fmt> ...` and its lines."""

    kind: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    title: str | None = None
    connection: Connection | None = None
    bandwidths: tuple[str, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()

    @property
    def payload_types(self) -> tuple[int, ...]:
        """The formats as RTP payload types (for RTP/* protocols)."""
        return tuple(int(f) for f in self.formats if f.isdigit() and len(f) <= 3 and int(f) < 128)

    def rtpmaps(self) -> dict[int, RtpMap]:
        """The `a=rtpmap` attributes by payload type (§6.6)."""
        out: dict[int, RtpMap] = {}
        for value in self.attribute_values("rtpmap"):
            pt_text, _, rest = value.partition(" ")
            pt = _int(pt_text, "rtpmap payload type", 0, 127)
            fields = rest.strip().split("/")
            if len(fields) not in (2, 3) or not fields[0]:
                raise SdpParseError(f"a=rtpmap value {value!r} is not '<pt> <encoding>/<clock>[/<channels>]'")
            clock = _int(fields[1], "rtpmap clock rate", 1, 10**7)
            channels = _int(fields[2], "rtpmap channels", 1, 255) if len(fields) == 3 else None
            out[pt] = RtpMap(pt, fields[0], clock, channels)
        return out

    def fmtp(self, pt: int) -> str | None:
        """The `a=fmtp` parameters of a payload type, None if absent."""
        for value in self.attribute_values("fmtp"):
            pt_text, _, params = value.partition(" ")
            if pt_text == str(pt):
                return params.strip()
        return None

    def candidates(self) -> list[Candidate]:
        """The ICE candidates (RFC 8839 §5.1)."""
        return [Candidate.parse_untrusted(v) for v in self.attribute_values("candidate")]

    def rtcp(self) -> tuple[int, Connection | None] | None:
        """`a=rtcp:<port> [<nettype> <addrtype> <address>]` (RFC 3605 §2.1), None if absent."""
        value = self.attribute("rtcp")
        if value is None:
            return None
        parts = value.split()
        port = _int(parts[0] if parts else "", "a=rtcp port", 0, 65535)
        if len(parts) == 1:
            return port, None
        if len(parts) != 4:
            raise SdpParseError(f"a=rtcp value {value!r} is not '<port> [IN IP4|IP6 <address>]'")
        return port, Connection(parts[3], parts[2], parts[1])

    def serialize_lines(self) -> list[str]:
        """The lines of this media description, without line ends."""
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        # rstrip(" ") only: str.rstrip() would also eat the \x1c-\x1f the parser let into `proto`.
        lines = [f"m={self.kind} {port} {self.proto} {' '.join(self.formats)}".rstrip(" ")]
        if self.title is not None:
            lines.append(f"i={self.title}")
        if self.connection is not None:
            lines.append(f"c={self.connection.serialize()}")
        lines += [f"b={b}" for b in self.bandwidths]
        if self.key is not None:
            lines.append(f"k={self.key}")
        lines += [f"a={a.serialize()}" for a in self.attributes]
        return lines


@dataclass(frozen=True, slots=True)
class SessionDescription(_AttributeHolder):
    """A whole SDP body. `other` keeps u/e/p/r/z/k session lines verbatim as (type, value)."""

    origin: Origin
    name: str = "-"
    info: str | None = None
    connection: Connection | None = None
    bandwidths: tuple[str, ...] = ()
    times: tuple[str, ...] = ("0 0",)
    other: tuple[tuple[str, str], ...] = ()
    attributes: tuple[Attribute, ...] = ()
    media: tuple[Media, ...] = field(default=())

    @classmethod
    def parse_untrusted(cls, data: str | bytes) -> SessionDescription:
        """Parse an SDP body; raises only `SdpParseError`."""
        if isinstance(data, bytes):
            if len(data) > MAX_SDP_BYTES:
                raise SdpParseError(f"SDP of {len(data)} bytes exceeds {MAX_SDP_BYTES}")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SdpParseError(f"SDP is not UTF-8 (byte {exc.start})") from None
        else:
            text = data
            if len(text) > MAX_SDP_BYTES:
                raise SdpParseError(f"SDP of {len(text)} characters exceeds {MAX_SDP_BYTES}")
        return _Parser(text).parse()

    def serialize(self) -> str:
        """The SDP body, CRLF line ends (RFC 8866 §5)."""
        lines = ["v=0", f"o={self.origin.serialize()}", f"s={self.name}"]
        if self.info is not None:
            lines.append(f"i={self.info}")
        lines += [f"{t}={v}" for t, v in self.other if t in "uep"]
        if self.connection is not None:
            lines.append(f"c={self.connection.serialize()}")
        lines += [f"b={b}" for b in self.bandwidths]
        lines += [f"t={t}" for t in (self.times or ("0 0",))]
        lines += [f"{t}={v}" for t, v in self.other if t in "rzk"]
        lines += [f"a={a.serialize()}" for a in self.attributes]
        for m in self.media:
            lines += m.serialize_lines()
        return "\r\n".join(lines) + "\r\n"

    def __str__(self) -> str:
        return self.serialize()

    def session_or_media(self, media: Media, name: str) -> str | None:
        """An attribute from the media level, else the session level (RFC 8839 §5.4, RFC 8122 §5)."""
        value = media.attribute(name)
        return self.attribute(name) if value is None else value

    def fingerprint_for(self, media: Media) -> Fingerprint | None:
        """The fingerprint that applies to `media` (media level first, then session level)."""
        return media.fingerprint() or self.fingerprint()

    def direction_for(self, media: Media) -> Direction:
        """The effective direction of `media` (media level, then session level, else sendrecv)."""
        return media.direction() or self.direction() or Direction.SENDRECV

    def connection_for(self, media: Media) -> Connection | None:
        """The connection that applies to `media` (§5.7)."""
        return media.connection or self.connection


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.lineno = 0

    def fail(self, message: str) -> SdpParseError:
        return SdpParseError(f"SDP line {self.lineno}: {message}")

    def parse(self) -> SessionDescription:
        lines = self.text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if len(lines) > MAX_LINES:
            raise SdpParseError(f"SDP has {len(lines)} lines, more than {MAX_LINES}")
        records: list[tuple[int, str, str]] = []
        for number, raw in enumerate(lines, 1):
            self.lineno = number
            line = raw[:-1] if raw.endswith("\r") else raw
            if len(line) < 2 or line[1] != "=":
                raise self.fail(f"not '<type>=<value>': {line[:40]!r}")
            kind = line[0]
            if kind not in _KNOWN:
                # RFC 8866 §5: a description with a type letter we do not understand is ignored whole.
                raise self.fail(f"unknown line type {kind!r}")
            value = line[2:]
            if "\r" in value or "\0" in value:
                raise self.fail("CR or NUL inside a line")
            records.append((number, kind, value))
        if not records:
            raise SdpParseError("SDP is empty")
        if records[0][1:] != ("v", "0"):
            self.lineno = records[0][0]
            raise self.fail("the first line must be 'v=0'")
        if len(records) < 3 or records[1][1] != "o" or records[2][1] != "s":
            raise SdpParseError("SDP must start with v=, o=, s= lines")
        session: dict[str, list[str]] = {}
        session_attrs: list[Attribute] = []
        other: list[tuple[str, str]] = []
        media: list[Media] = []
        current: dict[str, list[str]] | None = None
        current_attrs: list[Attribute] = []
        current_m = ""
        for number, kind, value in records[1:]:
            self.lineno = number
            if kind == "m":
                if current is not None:
                    media.append(self._media(current_m, current, current_attrs))
                if len(media) >= MAX_MEDIA:
                    raise self.fail(f"more than {MAX_MEDIA} media descriptions")
                current, current_attrs, current_m = {}, [], value
                continue
            if current is not None:
                if kind not in _MEDIA_LEVEL:
                    raise self.fail(f"'{kind}=' line inside a media description")
                if kind == "a":
                    current_attrs.append(self._attribute(value))
                else:
                    current.setdefault(kind, []).append(value)
                continue
            if kind == "a":
                session_attrs.append(self._attribute(value))
            elif kind in "uepzrk":
                other.append((kind, value))
            else:
                session.setdefault(kind, []).append(value)
        if current is not None:
            media.append(self._media(current_m, current, current_attrs))
        for kind in "osic":
            if len(session.get(kind, [])) > 1:
                raise SdpParseError(f"SDP has more than one session-level '{kind}=' line")
        self.lineno = records[1][0]
        origin = self._origin(session["o"][0])
        conn = session.get("c")
        info = session.get("i")
        return SessionDescription(
            origin=origin,
            name=session["s"][0],
            info=info[0] if info else None,
            connection=self._connection(conn[0]) if conn else None,
            bandwidths=tuple(session.get("b", [])),
            times=tuple(session.get("t", [])) or ("0 0",),
            # In the order serialize() writes them (u/e/p before t=, r/z/k after), so that a body
            # with them out of RFC 8866 order still round-trips.
            other=tuple(sorted(other, key=lambda line: line[0] not in "uep")),
            attributes=tuple(session_attrs),
            media=tuple(media),
        )

    def _attribute(self, value: str) -> Attribute:
        name, sep, rest = value.partition(":")
        if name not in _USUAL_ATTRIBUTES and not _TOKEN.fullmatch(name):
            raise self.fail(f"attribute name {name[:40]!r} is not a token")
        return Attribute(name, rest if sep else None)

    def _origin(self, value: str) -> Origin:
        parts = value.split(" ")
        if len(parts) != 6 or not all(parts):
            raise self.fail(f"o= needs 6 fields: {value[:80]!r}")
        user, sid, version, nettype, addrtype, address = parts
        if not sid.isascii() or not sid.isdigit() or not version.isascii() or not version.isdigit():
            raise self.fail("o= session id and version must be numeric")
        return Origin(user, sid, version, address, nettype, addrtype)

    def _connection(self, value: str) -> Connection:
        parts = value.split(" ")
        if len(parts) != 3 or not all(parts):
            raise self.fail(f"c= needs 3 fields: {value[:80]!r}")
        if parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
            raise self.fail(f"c= network {parts[0]} {parts[1]} is not IN IP4/IP6")
        return Connection(parts[2], parts[1], parts[0])

    def _media(self, value: str, lines: dict[str, list[str]], attrs: list[Attribute]) -> Media:
        parts = value.split(" ")
        if len(parts) < 3 or not all(parts[:3]):
            raise self.fail(f"m= needs '<media> <port> <proto> <fmt>...': {value[:80]!r}")
        kind, port_text, proto, *formats = parts
        port_part, slash, count = port_text.partition("/")
        port = _int(port_part, "m= port", 0, 65535)
        port_count = _int(count, "m= port count", 1, 65535) if slash else None
        if any(not f for f in formats):
            raise self.fail("m= has an empty format")
        if "RTP" in proto:
            for f in formats:
                _int(f, "m= payload type", 0, 127)
        conns = lines.get("c", [])
        if len(conns) > 1:
            raise self.fail("more than one c= line in a media description")
        titles = lines.get("i", [])
        keys = lines.get("k", [])
        return Media(
            kind=kind,
            port=port,
            proto=proto,
            formats=tuple(formats),
            port_count=port_count,
            title=titles[0] if titles else None,
            connection=self._connection(conns[0]) if conns else None,
            bandwidths=tuple(lines.get("b", [])),
            key=keys[0] if keys else None,
            attributes=tuple(attrs),
        )
