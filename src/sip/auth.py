"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 7616, RFC 8760).

Client side:

* `challenges(response) -> list[Challenge]` reads WWW-Authenticate (401) or Proxy-Authenticate
  (407); `Challenge.reply_header` is the header to answer with (Authorization or
  Proxy-Authorization, §22.2/§22.3).
* `DigestClient(username, password)`: `authorize(challenge, method, uri, cnonce, body=b"")`
  returns `Credentials` (`str(creds)` is the header value). It keeps a nonce count per nonce
  (RFC 7616 §3.4: nc increments for each request using the same nonce) and `can_retry(challenge)`
  says whether answering again makes sense (a new realm, or `stale=true`; otherwise the password
  was wrong). The caller passes `cnonce`: randomness is injected.
* qop: `auth` preferred, then `auth-int` (hashes the body); without qop the RFC 2069 form is used.
  Algorithms: MD5, SHA-256, SHA-512-256 and their `-sess` variants.

Server side:

* `make_challenge(realm, nonce, ...) -> Challenge` (the caller makes the nonce).
* `parse_credentials(value) -> Credentials`, `verify(credentials, method, ha1, body=b"")`
  (constant-time compare); `compute_ha1(username, realm, password, algorithm)`.

Parsers raise only `SipParseError`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from sip.errors import SipParseError
from sip.headers import quote, split_top, unquote
from sip.message import Response
from sip.uri import is_token

_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}


def _hash_name(algorithm: str) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    name = _HASHES.get(base)
    if name is None:
        raise SipParseError(f"unsupported digest algorithm {algorithm[:40]!r}")
    return name


def _h(algorithm: str, data: str) -> str:
    return hashlib.new(_hash_name(algorithm), data.encode("utf-8", "surrogateescape")).hexdigest()


def _h_bytes(algorithm: str, data: bytes) -> str:
    return hashlib.new(_hash_name(algorithm), data).hexdigest()


def supported_algorithm(algorithm: str) -> bool:
    """True when `algorithm` (e.g. `SHA-256-sess`) can be computed here."""
    try:
        hashlib.new(_hash_name(algorithm))
    except (SipParseError, ValueError):
        return False
    return True


def parse_auth_params(value: str, what: str) -> tuple[str, list[tuple[str, str]]]:
    """Split `Scheme a=b, c="d,e"` into the scheme and unquoted `(lower-cased name, value)` pairs.

    Commas inside quoted strings do not split (RFC 2617 §3.2.1 `qop="auth,auth-int"`).
    """
    text = value.strip(" \t")
    scheme, _, rest = text.partition(" ")
    if not is_token(scheme):
        raise SipParseError(f"invalid auth scheme in {what}: {text[:40]!r}")
    params: list[tuple[str, str]] = []
    for part in split_top(rest, ",", what):
        item = part.strip(" \t")
        if not item:
            continue  # RFC 7235 §7: empty list elements are ignored
        name, eq, raw = item.partition("=")
        name = name.strip(" \t")
        raw = raw.strip(" \t")
        if not eq or not is_token(name):
            raise SipParseError(f"invalid auth parameter {item[:40]!r} in {what}")
        if raw.startswith('"'):
            if len(raw) < 2 or not raw.endswith('"'):
                raise SipParseError(f"bad quoted value of {name!r} in {what}")
        elif not raw or not is_token(raw.replace("/", "").replace(":", "").replace("=", "")):
            raise SipParseError(f"invalid value of {name!r} in {what}")
        params.append((name.lower(), unquote(raw)))
    return scheme, params


@dataclass(frozen=True, slots=True)
class Challenge:
    """A Digest challenge from WWW-Authenticate or Proxy-Authenticate (RFC 2617 §3.2.1)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None
    proxy: bool = False

    @property
    def reply_header(self) -> str:
        """The header that answers this challenge: Proxy-Authorization for 407 (§22.3)."""
        return "Proxy-Authorization" if self.proxy else "Authorization"

    @property
    def header_name(self) -> str:
        """The header this challenge is sent in."""
        return "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"

    def __str__(self) -> str:
        parts = [f"realm={quote(self.realm)}"]
        if self.domain is not None:
            parts.append(f"domain={quote(self.domain)}")
        parts.append(f"nonce={quote(self.nonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f'qop="{",".join(self.qop)}"')
        return "Digest " + ", ".join(parts)


def parse_challenge(value: str, proxy: bool = False) -> Challenge:
    """Parse a Digest challenge; other schemes and missing realm/nonce raise SipParseError."""
    what = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
    scheme, params = parse_auth_params(value, what)
    if scheme.lower() != "digest":
        raise SipParseError(f"unsupported auth scheme {scheme!r} in {what}")
    d = dict(params)
    if "realm" not in d or "nonce" not in d:
        raise SipParseError(f"Digest challenge without realm or nonce in {what}")
    qop = tuple(q.strip(" \t") for q in d["qop"].split(",") if q.strip(" \t")) if "qop" in d else ()
    return Challenge(
        realm=d["realm"],
        nonce=d["nonce"],
        algorithm=d.get("algorithm", "MD5"),
        qop=qop,
        opaque=d.get("opaque"),
        stale=d.get("stale", "").lower() == "true",
        domain=d.get("domain"),
        proxy=proxy,
    )


def challenges(response: Response) -> list[Challenge]:
    """The Digest challenges of a 401 or 407 (others, or non-Digest schemes, are skipped)."""
    out: list[Challenge] = []
    for name, proxy in (("WWW-Authenticate", False), ("Proxy-Authenticate", True)):
        for value in response.headers.get_all(name):
            try:
                out.append(parse_challenge(value, proxy))
            except SipParseError:
                continue
    return out


@dataclass(frozen=True, slots=True)
class Credentials:
    """Digest credentials of Authorization / Proxy-Authorization (RFC 2617 §3.2.2)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None

    def __str__(self) -> str:
        parts = [
            f"username={quote(self.username)}",
            f"realm={quote(self.realm)}",
            f"nonce={quote(self.nonce)}",
            f"uri={quote(self.uri)}",
            f"response={quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")  # unquoted: RFC 2617 §3.2.2 message-qop
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        return "Digest " + ", ".join(parts)


def parse_credentials(value: str) -> Credentials:
    """Parse Digest credentials from an Authorization or Proxy-Authorization value."""
    scheme, params = parse_auth_params(value, "Authorization")
    if scheme.lower() != "digest":
        raise SipParseError(f"unsupported auth scheme {scheme!r} in Authorization")
    d = dict(params)
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in d]
    if missing:
        raise SipParseError(f"Digest credentials without {', '.join(missing)}")
    qop = d.get("qop")
    if qop is not None and (d.get("cnonce") is None or d.get("nc") is None):
        # RFC 2617 §3.2.2: with qop, cnonce and nc MUST be present.
        raise SipParseError("Digest credentials with qop but without cnonce or nc")
    nc = d.get("nc")
    if nc is not None and (len(nc) != 8 or any(c not in "0123456789abcdefABCDEF" for c in nc)):
        raise SipParseError(f"invalid nonce count {nc[:20]!r}")
    return Credentials(
        username=d["username"],
        realm=d["realm"],
        nonce=d["nonce"],
        uri=d["uri"],
        response=d["response"],
        algorithm=d.get("algorithm", "MD5"),
        cnonce=d.get("cnonce"),
        opaque=d.get("opaque"),
        qop=qop,
        nc=nc,
    )


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """HA1 = H(username:realm:password) (RFC 2617 §3.2.2.2), what a server stores."""
    return _h(algorithm, f"{username}:{realm}:{password}")


def compute_response(
    *,
    ha1: str,
    algorithm: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The `response` value (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1) from a plain (non-sess) HA1."""
    if algorithm.upper().endswith("-SESS"):
        # RFC 7616 §3.4.2: HA1 for -sess folds in the nonce and cnonce.
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce or ''}")
    if qop == "auth-int":
        ha2 = _h(algorithm, f"{method}:{uri}:{_h_bytes(algorithm, body)}")
    else:
        ha2 = _h(algorithm, f"{method}:{uri}")
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")  # RFC 2069 compatibility
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class DigestClient:
    """Answers Digest challenges for one user; keeps nonce counts and detects bad passwords."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self._password = password
        self._nonce_counts: dict[str, int] = {}
        self._answered: dict[tuple[bool, str], str] = {}  # (proxy, realm) -> nonce answered

    def can_retry(self, challenge: Challenge) -> bool:
        """Whether answering `challenge` makes sense.

        False when this realm was already answered and the challenge is not `stale` (§22.2: a
        repeated challenge means the credentials were rejected), or the algorithm is unknown.
        """
        key = (challenge.proxy, challenge.realm)
        fresh = key not in self._answered or challenge.stale
        return fresh and supported_algorithm(challenge.algorithm)

    def authorize(
        self, challenge: Challenge, method: str, uri: str, cnonce: str, body: bytes = b""
    ) -> Credentials:
        """Credentials answering `challenge` for a request `method uri` (cnonce injected)."""
        if not supported_algorithm(challenge.algorithm):
            raise SipParseError(f"unsupported digest algorithm {challenge.algorithm[:40]!r}")
        if "auth" in challenge.qop:
            qop: str | None = "auth"
        elif "auth-int" in challenge.qop:
            qop = "auth-int"
        elif challenge.qop:
            raise SipParseError(f"no supported qop in {challenge.qop!r}")
        else:
            qop = None
        nc: str | None = None
        used_cnonce: str | None = None
        if qop is not None or challenge.algorithm.upper().endswith("-SESS"):
            used_cnonce = cnonce
        if qop is not None:
            count = self._nonce_counts.get(challenge.nonce, 0) + 1
            self._nonce_counts[challenge.nonce] = count
            nc = f"{count:08x}"
        self._answered[(challenge.proxy, challenge.realm)] = challenge.nonce
        ha1 = compute_ha1(self.username, challenge.realm, self._password, challenge.algorithm)
        response = compute_response(
            ha1=ha1,
            algorithm=challenge.algorithm,
            method=method,
            uri=uri,
            nonce=challenge.nonce,
            qop=qop,
            nc=nc,
            cnonce=used_cnonce,
            body=body,
        )
        return Credentials(
            username=self.username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=uri,
            response=response,
            algorithm=challenge.algorithm,
            cnonce=used_cnonce,
            opaque=challenge.opaque,
            qop=qop,
            nc=nc,
        )


def make_challenge(
    realm: str,
    nonce: str,
    *,
    algorithm: str = "MD5",
    qop: tuple[str, ...] = ("auth",),
    opaque: str | None = None,
    stale: bool = False,
    proxy: bool = False,
) -> Challenge:
    """A server challenge; `str(challenge)` is the WWW-/Proxy-Authenticate value."""
    return Challenge(realm, nonce, algorithm, qop, opaque, stale, None, proxy)


def verify(credentials: Credentials, method: str, ha1: str, body: bytes = b"") -> bool:
    """True when `credentials.response` is right for `ha1` (constant-time comparison).

    The caller checks that `credentials.nonce` is one it issued (and answers stale=true when it
    expired) and that `credentials.realm`/`username` are the expected ones.
    """
    try:
        expected = compute_response(
            ha1=ha1,
            algorithm=credentials.algorithm,
            method=method,
            uri=credentials.uri,
            nonce=credentials.nonce,
            qop=credentials.qop,
            nc=credentials.nc,
            cnonce=credentials.cnonce,
            body=body,
        )
    except SipParseError:
        return False
    # compare_digest takes str only when both are ASCII: compare the bytes (a peer's junk is not ours).
    return hmac.compare_digest(
        expected.encode(), credentials.response.lower().encode("utf-8", "surrogateescape")
    )
