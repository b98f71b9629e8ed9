"""Digest authentication for the UA, INTERIM: delete when the core's `sip.auth` lands.

RFC 7616 / RFC 3261 §22.4 digest with MD5 and SHA-256, qop=auth (or no qop, RFC 2069 style):
`parse_challenge`/`build_authorization` for the UAC, `verify_credentials` for the embedded
registrar. Pure: the nonce check and the HA1 lookup are passed in.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from sip.errors import SipParseError
from sip.headers import split_list, unquote
from sip.registrar import NonceCheck

__all__ = [
    "Challenge",
    "DigestError",
    "Verdict",
    "build_authorization",
    "parse_challenge",
    "verify_credentials",
]


class DigestError(ValueError):
    """A challenge or credentials header that cannot be used."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed `Digest` challenge (RFC 7616 §3.3)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of checking credentials: who, whether the response matched, the nonce state."""

    ok: bool
    user: str
    nonce: NonceCheck


def _digest_params(value: str, what: str) -> dict[str, str]:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise DigestError(f"{what}: not a Digest scheme")
    params: dict[str, str] = {}
    try:
        parts = split_list(rest, what)
    except SipParseError as exc:
        raise DigestError(str(exc)) from None
    for part in parts:
        name, eq, val = part.partition("=")
        if not eq:
            raise DigestError(f"{what}: parameter without value {part[:30]!r}")
        params[name.strip().lower()] = unquote(val.strip())
    return params


def _hash(algorithm: str, text: str) -> str:
    match algorithm:
        case "MD5":
            return hashlib.md5(text.encode()).hexdigest()
        case "SHA-256":
            return hashlib.sha256(text.encode()).hexdigest()
    raise DigestError(f"unsupported digest algorithm {algorithm!r}")


def parse_challenge(value: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate value; raises DigestError."""
    p = _digest_params(value, "challenge")
    if "realm" not in p or "nonce" not in p:
        raise DigestError("challenge without realm or nonce")
    qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
    return Challenge(p["realm"], p["nonce"], p.get("algorithm", "MD5").upper(), qop, p.get("opaque"))


def build_authorization(
    challenge: Challenge, *, method: str, uri: str, user: str, password: str, cnonce: str
) -> str:
    """The Authorization / Proxy-Authorization value answering `challenge` (RFC 7616 §3.4)."""
    alg = challenge.algorithm
    ha1 = _hash(alg, f"{user}:{challenge.realm}:{password}")
    ha2 = _hash(alg, f"{method}:{uri}")
    fields = [
        f'username="{user}"',
        f'realm="{challenge.realm}"',
        f'nonce="{challenge.nonce}"',
        f'uri="{uri}"',
    ]
    if "auth" in challenge.qop:
        response = _hash(alg, f"{ha1}:{challenge.nonce}:00000001:{cnonce}:auth:{ha2}")
        fields += [
            f'response="{response}"',
            f"algorithm={alg}",
            f'cnonce="{cnonce}"',
            "qop=auth",
            "nc=00000001",
        ]
    elif not challenge.qop:
        response = _hash(alg, f"{ha1}:{challenge.nonce}:{ha2}")
        fields += [f'response="{response}"', f"algorithm={alg}"]
    else:
        raise DigestError(f"no supported qop in {challenge.qop}")
    if challenge.opaque is not None:
        fields.append(f'opaque="{challenge.opaque}"')
    return "Digest " + ", ".join(fields)


def verify_credentials(
    value: str,
    *,
    method: str,
    realm: str,
    ha1_lookup: Callable[[str, str, str], str | None],
    nonce_ok: Callable[[str], NonceCheck],
) -> Verdict:
    """Check an Authorization value against the HA1 of its user (RFC 7616 §3.4.1)."""
    p = _digest_params(value, "credentials")
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in p:
            raise DigestError(f"credentials without {name}")
    user, alg = p["username"], p.get("algorithm", "MD5").upper()
    nonce = nonce_ok(p["nonce"])
    if p["realm"] != realm or alg not in ("MD5", "SHA-256"):
        return Verdict(False, user, nonce)
    ha1 = ha1_lookup(user, realm, alg)
    if ha1 is None:
        return Verdict(False, user, nonce)
    ha2 = _hash(alg, f"{method}:{p['uri']}")
    if p.get("qop"):
        if p["qop"].lower() != "auth" or "cnonce" not in p or "nc" not in p:
            return Verdict(False, user, nonce)
        expected = _hash(alg, f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:auth:{ha2}")
    else:
        expected = _hash(alg, f"{ha1}:{p['nonce']}:{ha2}")
    return Verdict(hmac.compare_digest(expected, p["response"].lower()), user, nonce)
