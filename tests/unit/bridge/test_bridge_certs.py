"""bridge.certs: self-signed generation, chains, and one error line naming the file for each bad case."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from bridge.certs import (
    CertError,
    cert_paths,
    check_pair,
    ensure_certificate,
    generate_self_signed,
    host_names,
    load_into,
    new_server_context,
)

NOW = dt.datetime.now(dt.UTC)


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_name: str) -> ssl.SSLObject:
    """A full TLS handshake over memory BIOs (no sockets); returns the client side."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return client
    raise AssertionError("handshake did not finish")


def test_generate_self_signed_and_serve_it(tmp_path: Path) -> None:
    names = ["bridge-host", "localhost", "127.0.0.1", "::1", "203.0.113.7"]
    info, generated = ensure_certificate(tmp_path / "wrtcCert", names, now=NOW)
    assert generated
    crt, key = cert_paths(tmp_path / "wrtcCert")
    assert (info.cert_file, info.key_file) == (crt, key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert set(info.names) == set(names)
    assert len(info.fingerprint) == 32 * 3 - 1
    assert info.not_after > NOW + dt.timedelta(days=300)
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    # a second call loads what is there
    again, generated = ensure_certificate(tmp_path / "wrtcCert", names, now=NOW)
    assert not generated
    assert again.fingerprint == info.fingerprint
    # --force replaces it
    forced, generated = ensure_certificate(tmp_path / "wrtcCert", names, now=NOW, force=True)
    assert generated
    assert forced.fingerprint != info.fingerprint
    # and it serves TLS 1.2+ to a client that trusts it, for a DNS name and an IP address
    server = new_server_context()
    load_into(server, crt, key, now=NOW)
    client = ssl.create_default_context(cafile=str(crt))
    for name in ("localhost", "127.0.0.1"):
        side = _handshake(server, client, name)
        assert side.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_server_refuses_old_tls(tmp_path: Path) -> None:
    generate_self_signed(tmp_path, ["localhost"], now=NOW)
    server = new_server_context()
    load_into(server, *cert_paths(tmp_path), now=NOW)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError):
        _handshake(server, client, "localhost")
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2


def test_full_chain_from_a_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("bridge.example.org", "127.0.0.1")
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    crt.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    server = new_server_context()
    info = load_into(server, crt, key, now=NOW)
    assert info.chain_length == 2
    assert "bridge.example.org" in info.names
    client = ssl.create_default_context()
    ca.configure_trust(client)  # trusts only the root: the intermediate must come from the chain
    assert _handshake(server, client, "bridge.example.org").version() is not None


def test_key_that_does_not_match(tmp_path: Path) -> None:
    generate_self_signed(tmp_path / "a", ["localhost"], now=NOW)
    generate_self_signed(tmp_path / "b", ["localhost"], now=NOW)
    crt, _ = cert_paths(tmp_path / "a")
    _, key = cert_paths(tmp_path / "b")
    with pytest.raises(CertError) as info:
        check_pair(crt, key, now=NOW)
    assert str(info.value) == f"{key}: the private key does not match the certificate in {crt}"


def test_expired_and_not_yet_valid(tmp_path: Path) -> None:
    old = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    info = generate_self_signed(tmp_path, ["localhost"], now=old)
    with pytest.raises(CertError) as err:
        check_pair(info.cert_file, info.key_file, now=NOW)
    assert str(err.value) == f"{info.cert_file}: the certificate expired on 2002-01-01 00:00:00 UTC"
    with pytest.raises(CertError) as err:
        check_pair(info.cert_file, info.key_file, now=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
    assert str(err.value) == f"{info.cert_file}: the certificate is not valid before 2000-12-31 23:55:00 UTC"


@pytest.mark.parametrize(
    ("which", "content", "problem"),
    [
        ("crt", b"garbage", "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"),
        ("crt", b"", "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)"),
        ("key", b"garbage", "not a usable PEM private key"),
        ("key", None, "file not found"),
        ("crt", None, "file not found"),
    ],
)
def test_garbage_and_missing_files(tmp_path: Path, which: str, content: bytes | None, problem: str) -> None:
    generate_self_signed(tmp_path, ["localhost"], now=NOW)
    crt, key = cert_paths(tmp_path)
    target = crt if which == "crt" else key
    if content is None:
        target.unlink()
    else:
        target.write_bytes(content)
    with pytest.raises(CertError) as info:
        check_pair(crt, key, now=NOW)
    assert str(info.value).startswith(f"{target}: {problem}")
    assert "\n" not in str(info.value)


def test_one_file_missing_is_an_error_not_a_silent_replacement(tmp_path: Path) -> None:
    generate_self_signed(tmp_path, ["localhost"], now=NOW)
    _, key = cert_paths(tmp_path)
    key.unlink()
    with pytest.raises(CertError) as info:
        ensure_certificate(tmp_path, ["localhost"], now=NOW)
    assert str(info.value) == f"{key}: file not found"


def test_encrypted_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    generate_self_signed(tmp_path, ["localhost"], now=NOW)
    crt, key = cert_paths(tmp_path)
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(CertError) as info:
        check_pair(crt, key, now=NOW)
    assert str(info.value) == f"{key}: the private key is encrypted; give an unencrypted PEM key"


def test_unreadable_file(tmp_path: Path) -> None:
    generate_self_signed(tmp_path, ["localhost"], now=NOW)
    crt, key = cert_paths(tmp_path)
    crt.unlink()
    crt.mkdir()
    with pytest.raises(CertError) as info:
        check_pair(crt, key, now=NOW)
    assert str(info.value) == f"{crt}: cannot read: Is a directory"


def test_host_names() -> None:
    names = host_names("198.51.100.9")
    assert {"localhost", "127.0.0.1", "::1", "198.51.100.9"} <= set(names)
    assert len(names) == len(set(names))
