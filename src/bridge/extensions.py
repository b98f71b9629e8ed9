"""The extension table: who may call through the bridge, with passwords stored only as hashes.

The table lives in `<data_dir>/extensions.toml`, apart from `config.toml`, so that the CLI can rewrite it
(`mccp-bridge extension add|remove`) without touching the hand-edited configuration. Its shape::

    [extensions."100"]
    scrypt = "scrypt$16384$8$1$<salt, base64>$<key, base64>"
    realm = "mccp-bridge"
    ha1_md5 = "<hex>"        # MD5(number ":" realm ":" password), RFC 7616 s3.4.2
    ha1_sha256 = "<hex>"     # the same with SHA-256

The scrypt entry (per-entry random salt) is what the MCCP password check compares against; the two digest
HA1 values let the embedded SIP registrar challenge phones for the configured realm without keeping the
plaintext. Nothing in this module logs, and no `repr()` shows a hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
import os
import re
import secrets
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bridge.config import ConfigError, extension_number

SCRYPT_N = 2**14  # RFC 7914 s2: N=2^14, r=8, p=1 is the interactive-login figure (16 MiB, ~60 ms here)
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_KEY_LEN = 32
SALT_LEN = 16
MAX_PASSWORD_LEN = 128
DEMO_NUMBERS = ("100", "101")


# scrypt(password, salt, N, r, p, dklen, maxmem) -> key: the same function as hashlib.scrypt
# (RFC 7914), computed by libsodium when PyNaCl is installed (its SIMD scrypt: ~35 ms of CPU for
# N=2^14 here against ~50 ms for OpenSSL's, same bytes; it releases the GIL like hashlib).
_Scrypt = Callable[[bytes, bytes, int, int, int, int, int], bytes]


def _openssl_scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int, maxmem: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=dklen)


def _sodium_scrypt() -> _Scrypt | None:
    try:
        bindings = importlib.import_module("nacl.bindings")
    except ImportError:
        return None
    if not getattr(bindings, "has_crypto_pwhash_scryptsalsa208sha256", False):
        return None  # a minimal libsodium build
    low_level: Callable[..., bytes] = bindings.crypto_pwhash_scryptsalsa208sha256_ll

    def scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int, maxmem: int) -> bytes:
        return low_level(password, salt, n, r, p, dklen=dklen, maxmem=maxmem)

    return scrypt


SCRYPT: _Scrypt = _sodium_scrypt() or _openssl_scrypt
SCRYPT_IMPLEMENTATION = "libsodium" if SCRYPT is not _openssl_scrypt else "openssl"


class ExtensionsError(ConfigError):
    """The extensions file or an extension command was wrong; one line, naming the file or key."""


@dataclass(frozen=True, slots=True)
class ScryptHash:
    """A scrypt password hash (RFC 7914) with its parameters and salt."""

    n: int
    r: int
    p: int
    salt: bytes = field(repr=False)
    key: bytes = field(repr=False)

    def encode(self) -> str:
        """`scrypt$N$r$p$salt$key`, salt and key in base64."""
        salt = base64.b64encode(self.salt).decode()
        key = base64.b64encode(self.key).decode()
        return f"scrypt${self.n}${self.r}${self.p}${salt}${key}"

    @classmethod
    def decode(cls, text: str) -> ScryptHash:
        """Parse `encode()`'s output; raises ValueError on anything else."""
        match = re.fullmatch(
            r"scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([A-Za-z0-9+/=]{4,})\$([A-Za-z0-9+/=]{4,})", text
        )
        if not match:
            raise ValueError("not a scrypt$N$r$p$salt$key string")
        n, r, p = int(match[1]), int(match[2]), int(match[3])
        if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ValueError("scrypt parameters out of range")
        try:
            salt = base64.b64decode(match[4], validate=True)
            key = base64.b64decode(match[5], validate=True)
        except binascii.Error:
            raise ValueError("bad base64 in scrypt string") from None
        if not salt or not 16 <= len(key) <= 64:
            raise ValueError("scrypt salt or key has a bad length")
        return cls(n, r, p, salt, key)

    def derive(self, password: str) -> bytes:
        """scrypt(password) with this entry's salt and parameters (`SCRYPT`: libsodium or OpenSSL)."""
        memory = 256 * self.n * self.r + 2**20
        return SCRYPT(
            password.encode("utf-8", "surrogatepass"),
            self.salt,
            self.n,
            self.r,
            self.p,
            len(self.key),
            memory,
        )

    def matches(self, password: str) -> bool:
        """Constant-time comparison of scrypt(password) with the stored key."""
        return hmac.compare_digest(self.derive(password), self.key)


@dataclass(frozen=True, slots=True)
class Extension:
    """One extension: its number, the scrypt hash of its password and its digest HA1 values."""

    number: str
    scrypt: ScryptHash
    realm: str
    ha1_md5: str = field(repr=False)
    ha1_sha256: str = field(repr=False)

    def check_password(self, password: str) -> bool:
        """Whether `password` is this extension's, compared in constant time (hmac.compare_digest)."""
        return self.scrypt.matches(password)


def digest_ha1(algorithm: str, number: str, realm: str, password: str) -> str:
    """RFC 7616 s3.4.2: HA1 = H(username ":" realm ":" password), hex, for "MD5" or "SHA-256"."""
    data = f"{number}:{realm}:{password}".encode()
    match algorithm:
        case "MD5":
            return hashlib.md5(data, usedforsecurity=False).hexdigest()
        case "SHA-256":
            return hashlib.sha256(data).hexdigest()
        case _:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def check_new_password(password: str) -> str:
    """Validate a password given to `extension add`; raises ExtensionsError."""
    if not password or len(password) > MAX_PASSWORD_LEN:
        raise ExtensionsError("password", f"must be 1-{MAX_PASSWORD_LEN} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise ExtensionsError("password", "must not contain control characters")
    return password


def make_extension(
    number: str,
    password: str,
    *,
    realm: str,
    salt: bytes | None = None,
    n: int = SCRYPT_N,
) -> Extension:
    """Hash `password` for `number`: scrypt with a fresh random salt (or `salt`), plus the digest HA1s."""
    salt = os.urandom(SALT_LEN) if salt is None else salt
    scrypt = ScryptHash(n, SCRYPT_R, SCRYPT_P, salt, b"\0" * SCRYPT_KEY_LEN)
    scrypt = ScryptHash(n, SCRYPT_R, SCRYPT_P, salt, scrypt.derive(password))
    return Extension(
        number=number,
        scrypt=scrypt,
        realm=realm,
        ha1_md5=digest_ha1("MD5", number, realm, password),
        ha1_sha256=digest_ha1("SHA-256", number, realm, password),
    )


def random_password() -> str:
    """A random password for demo extensions: 16 URL-safe characters (96 bits)."""
    return secrets.token_urlsafe(12)


@dataclass(frozen=True, slots=True)
class ExtensionTable:
    """An immutable set of extensions, keyed by number. Changes return a new table."""

    entries: tuple[Extension, ...] = ()
    # number -> entry: every MCCP login and SIP REGISTER looks a number up (thousands of entries)
    _index: dict[str, Extension] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # reversed: with a repeated number the first entry wins, as a scan would find it
        object.__setattr__(self, "_index", {e.number: e for e in reversed(self.entries)})

    def get(self, number: str) -> Extension | None:
        """The extension with this number, or None."""
        return self._index.get(number)

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and self.get(number) is not None

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Extension]:
        return iter(self.entries)

    def with_extension(self, extension: Extension) -> ExtensionTable:
        """A table where `extension` replaces any entry of the same number (kept in number order)."""
        rest = [e for e in self.entries if e.number != extension.number]
        return ExtensionTable(tuple(sorted([*rest, extension], key=_sort_key)))

    def without(self, number: str) -> ExtensionTable:
        """A table without `number`; raises ExtensionsError if it is not there."""
        if number not in self:
            raise ExtensionsError(number, "no such extension")
        return ExtensionTable(tuple(e for e in self.entries if e.number != number))


def _sort_key(extension: Extension) -> tuple[int, str]:
    return (0 if extension.number.isdigit() else 1, extension.number.zfill(32))


def _field(entry: dict[str, object], name: str, where: str, source: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str):
        raise ExtensionsError(f"{where}.{name}", f"must be a string, got {value!r}", source)
    return value


def parse_extensions(text: str, source: str) -> ExtensionTable:
    """Parse the extensions TOML text; `source` (the file name) goes into error messages."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExtensionsError(None, f"invalid TOML: {exc}", source) from None
    unknown = sorted(set(document) - {"extensions"})
    if unknown:
        raise ExtensionsError(unknown[0], 'unknown table (only [extensions."NUMBER"] belongs here)', source)
    table = document.get("extensions", {})
    if not isinstance(table, dict):
        raise ExtensionsError("extensions", "must be a table", source)
    entries = []
    for number, entry in table.items():
        where = f'extensions."{number}"'
        try:
            extension_number(number)
        except ValueError as exc:
            raise ExtensionsError(where, f"bad extension number: {exc}", source) from None
        if not isinstance(entry, dict):
            raise ExtensionsError(where, "must be a table", source)
        extra = sorted(set(entry) - {"scrypt", "realm", "ha1_md5", "ha1_sha256"})
        if extra:
            raise ExtensionsError(f"{where}.{extra[0]}", "unknown field", source)
        try:
            scrypt = ScryptHash.decode(_field(entry, "scrypt", where, source))
        except ValueError as exc:
            if isinstance(exc, ExtensionsError):
                raise
            raise ExtensionsError(f"{where}.scrypt", str(exc), source) from None
        ha1 = {}
        for name, length in (("ha1_md5", 32), ("ha1_sha256", 64)):
            value = _field(entry, name, where, source)
            if not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
                raise ExtensionsError(f"{where}.{name}", f"must be {length} lowercase hex digits", source)
            ha1[name] = value
        realm = _field(entry, "realm", where, source)
        entries.append(Extension(number, scrypt, realm, ha1["ha1_md5"], ha1["ha1_sha256"]))
    return ExtensionTable(tuple(sorted(entries, key=_sort_key)))


def format_extensions(table: ExtensionTable) -> str:
    """The TOML text of `table` (every value is from a quote-free alphabet, so no escaping is needed)."""
    lines = [
        "# mccp-bridge extensions. Written by `mccp-bridge extension add|remove`; passwords are stored",
        "# only as hashes (scrypt for MCCP logins, digest HA1 for the SIP registrar's realm).",
        "# `mccp-bridge serve` re-reads this file on SIGHUP.",
    ]
    for entry in table:
        lines += [
            "",
            f'[extensions."{entry.number}"]',
            f'scrypt = "{entry.scrypt.encode()}"',
            f'realm = "{entry.realm}"',
            f'ha1_md5 = "{entry.ha1_md5}"',
            f'ha1_sha256 = "{entry.ha1_sha256}"',
        ]
    return "\n".join(lines) + "\n"


def load_extensions(path: Path) -> ExtensionTable:
    """Read the extensions file; a missing file is an empty table. Raises ExtensionsError naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ExtensionTable()
    except OSError as exc:
        raise ExtensionsError(
            None, f"cannot read extensions file: {exc.strerror or exc}", str(path)
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ExtensionsError(None, "extensions file is not UTF-8 text", str(path)) from None
    return parse_extensions(text, str(path))


def save_extensions(path: Path, table: ExtensionTable) -> None:
    """Write the table atomically (temporary file + rename), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(format_extensions(table))
    os.replace(tmp, path)


def demo_extensions(realm: str, *, n: int = SCRYPT_N) -> tuple[ExtensionTable, dict[str, str]]:
    """Extensions 100 and 101 with random passwords, and those passwords (shown once, never stored)."""
    passwords = {number: random_password() for number in DEMO_NUMBERS}
    table = ExtensionTable()
    for number, password in passwords.items():
        table = table.with_extension(make_extension(number, password, realm=realm, n=n))
    return table, passwords
