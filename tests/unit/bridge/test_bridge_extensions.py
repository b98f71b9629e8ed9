"""bridge.extensions: hashing (scrypt, RFC 7616 HA1), the TOML file round trip, and its error lines."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.extensions import (
    ExtensionsError,
    ExtensionTable,
    ScryptHash,
    demo_extensions,
    digest_ha1,
    format_extensions,
    load_extensions,
    make_extension,
    parse_extensions,
    save_extensions,
)

FAST = 2**4  # scrypt N for tests; the format records N, so verification uses whatever was stored


def test_rfc7616_ha1_vectors() -> None:
    # RFC 7616 s3.9.1: username Mufasa, realm http-auth@example.org, password "Circle of Life".
    # Its response values derive from these HA1s; check them against a direct computation.
    md5 = hashlib.md5(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    sha = hashlib.sha256(b"Mufasa:http-auth@example.org:Circle of Life").hexdigest()
    assert digest_ha1("MD5", "Mufasa", "http-auth@example.org", "Circle of Life") == md5
    assert digest_ha1("SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life") == sha
    # and the RFC's MD5 response, computed from our HA1, proves the HA1 is the one the RFC means
    ha2 = hashlib.md5(b"GET:/dir/index.html").hexdigest()
    nonce, cnonce = (
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    response = hashlib.md5(f"{md5}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
    assert response == "8ca523f5e9506fed4657c9700eebdbec"
    with pytest.raises(ValueError, match="unsupported digest algorithm"):
        digest_ha1("SHA-512", "a", "b", "c")


def test_rfc7914_scrypt_vector() -> None:
    # RFC 7914 s12: scrypt(P="password", S="NaCl", N=1024, r=8, p=16, dkLen=64)
    expected = bytes.fromhex(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
    )
    entry = ScryptHash(1024, 8, 16, b"NaCl", expected)
    assert entry.derive("password") == expected
    assert entry.matches("password")
    assert not entry.matches("passwore")


@settings(max_examples=40, deadline=None)
@given(
    password=st.binary(max_size=40),
    salt=st.binary(min_size=1, max_size=32),
    log_n=st.integers(min_value=1, max_value=6),
    r=st.integers(min_value=1, max_value=8),
    p=st.integers(min_value=1, max_value=3),
    dklen=st.integers(min_value=16, max_value=64),
)
def test_every_scrypt_implementation_is_rfc7914(
    password: bytes, salt: bytes, log_n: int, r: int, p: int, dklen: int
) -> None:
    # The bridge uses libsodium's scrypt when PyNaCl is installed, else OpenSSL's (hashlib): the
    # one in use, and libsodium's whenever it can be loaded, give hashlib's bytes.
    from bridge import extensions

    n = 2**log_n
    expected = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=dklen)
    implementations = [extensions.SCRYPT, extensions._openssl_scrypt]
    sodium = extensions._sodium_scrypt()
    if sodium is not None:
        implementations.append(sodium)
    for scrypt in implementations:
        assert scrypt(password, salt, n, r, p, dklen, 2**26) == expected
    assert (extensions.SCRYPT_IMPLEMENTATION == "libsodium") == (sodium is not None)


def test_make_extension_hashes_and_checks() -> None:
    ext = make_extension("100", "s3cret", realm="mccp-bridge", salt=b"0123456789abcdef", n=FAST)
    assert ext.check_password("s3cret")
    assert not ext.check_password("s3cret ")
    assert not ext.check_password("")
    assert ext.ha1_md5 == hashlib.md5(b"100:mccp-bridge:s3cret").hexdigest()
    assert ext.ha1_sha256 == hashlib.sha256(b"100:mccp-bridge:s3cret").hexdigest()
    assert "s3cret" not in repr(ext)
    assert ext.ha1_md5 not in repr(ext)
    # per-entry salt: the same password hashes differently by default
    a, b = make_extension("1", "pw", realm="r", n=FAST), make_extension("1", "pw", realm="r", n=FAST)
    assert a.scrypt.salt != b.scrypt.salt
    assert a.scrypt.key != b.scrypt.key


def test_default_cost_is_interactive_login_figure() -> None:
    ext = make_extension("100", "pw", realm="r")
    assert (ext.scrypt.n, ext.scrypt.r, ext.scrypt.p) == (2**14, 8, 1)
    assert ext.check_password("pw")


def test_file_round_trip_and_permissions(tmp_path: Path) -> None:
    table = ExtensionTable()
    for number in ("101", "9", "100", "alice"):
        table = table.with_extension(make_extension(number, f"pw-{number}", realm="mccp-bridge", n=FAST))
    path = tmp_path / "sub" / "extensions.toml"
    save_extensions(path, table)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "pw-100" not in text
    loaded = load_extensions(path)
    assert [e.number for e in loaded] == ["9", "100", "101", "alice"]
    assert loaded == table
    assert loaded.get("100") is not None
    assert loaded.get("100").check_password("pw-100")  # type: ignore[union-attr]
    assert format_extensions(loaded) == text


def test_add_replaces_and_remove(tmp_path: Path) -> None:
    table = ExtensionTable().with_extension(make_extension("100", "old", realm="r", n=FAST))
    table = table.with_extension(make_extension("100", "new", realm="r", n=FAST))
    assert len(table) == 1
    assert table.get("100").check_password("new")  # type: ignore[union-attr]
    assert "100" in table
    assert len(table.without("100")) == 0
    with pytest.raises(ExtensionsError) as info:
        table.without("555")
    assert str(info.value) == "555: no such extension"


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert len(load_extensions(tmp_path / "nope.toml")) == 0


def test_demo_extensions() -> None:
    table, passwords = demo_extensions("mccp-bridge", n=FAST)
    assert [e.number for e in table] == ["100", "101"]
    assert set(passwords) == {"100", "101"}
    assert passwords["100"] != passwords["101"]
    assert len(passwords["100"]) == 16
    assert table.get("101").check_password(passwords["101"])  # type: ignore[union-attr]


GOOD = make_extension("100", "pw", realm="r", salt=b"s" * 16, n=FAST)
GOOD_LINES = format_extensions(ExtensionTable((GOOD,))).splitlines()[-5:]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[extensions", "invalid TOML: "),
        ("[other]\n", 'other: unknown table (only [extensions."NUMBER"] belongs here)'),
        ("extensions = 3\n", "extensions: must be a table"),
        ('[extensions]\n"1 2" = {}\n', 'extensions."1 2": bad extension number: must be 1-32 characters'),
        ('[extensions]\n"100" = 1\n', 'extensions."100": must be a table'),
        (
            "\n".join(GOOD_LINES).replace("scrypt = ", "scrypt = 1 #"),
            'extensions."100".scrypt: must be a string, got 1',
        ),
        (
            "\n".join(GOOD_LINES).replace("scrypt$16", "scrypt$15"),
            'extensions."100".scrypt: scrypt parameters out of range',
        ),
        (
            "\n".join(GOOD_LINES).replace("scrypt$", "bcrypt$", 1),
            'extensions."100".scrypt: not a scrypt$N$r$p$salt$key',
        ),
        (
            "\n".join(GOOD_LINES).replace('ha1_md5 = "', 'ha1_md5 = "X'),
            'extensions."100".ha1_md5: must be 32 lowercase hex',
        ),
        ("\n".join(GOOD_LINES) + "\npassword = 'x'\n", 'extensions."100".password: unknown field'),
    ],
)
def test_bad_file_gives_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "extensions.toml"
    path.write_text(text)
    with pytest.raises(ExtensionsError) as info:
        load_extensions(path)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(message)
    assert line.endswith(f"(from {path})")


def test_good_lines_parse() -> None:
    assert parse_extensions("\n".join(GOOD_LINES), "x") == ExtensionTable((GOOD,))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "extensions.toml"
    path.write_bytes(b"\xff")
    with pytest.raises(ExtensionsError) as info:
        load_extensions(path)
    assert str(info.value) == f"extensions file is not UTF-8 text (from {path})"


GOOD_TEXT = "\n".join(GOOD_LINES)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD_TEXT)), st.integers(0, 20), st.text(max_size=30))
def test_parser_raises_only_extensions_error(at: int, cut: int, insert: str) -> None:
    """A damaged good file either parses or gives an ExtensionsError, never another exception."""
    text = GOOD_TEXT[:at] + insert + GOOD_TEXT[at + cut :]
    outcome: object
    try:
        outcome = parse_extensions(text, "fuzz")
    except ExtensionsError as exc:
        outcome = exc
    if isinstance(outcome, ExtensionTable):
        assert len(outcome) <= 1
    else:
        assert str(outcome).endswith("(from fuzz)")
