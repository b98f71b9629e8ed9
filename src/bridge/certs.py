"""The bridge's TLS certificate: `<data_dir>/wrtcCert/server.crt` + `server.key` (PEM).

`server.crt` may hold a full chain (leaf first, then intermediates). When neither file exists,
`ensure_certificate` creates a self-signed ECDSA P-256 pair for the host's names and addresses. A
certificate that is expired or not yet valid, a key that does not match the leaf, an encrypted key, or an
unreadable or garbage file is reported as a `CertError` whose text names the file.

`load_into(context, ...)` loads a checked pair into an `ssl.SSLContext`. Calling it again on the same
context (SIGHUP) swaps the certificate for new connections; established ones keep theirs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_NAME = "server.crt"
KEY_NAME = "server.key"
SELF_SIGNED_DAYS = 365
# TLS 1.2 suites: forward-secret AEAD only (TLS 1.3 suites are OpenSSL's defaults, all modern).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class CertError(Exception):
    """The certificate or key cannot be used. `str()` is one line starting with the file's path."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What was loaded or generated: files, leaf fingerprint, validity end, names, chain length."""

    cert_file: Path
    key_file: Path
    fingerprint: str  # SHA-256 of the leaf's DER, colon-separated upper-case hex (as in SDP a=fingerprint)
    not_after: dt.datetime
    names: tuple[str, ...]
    chain_length: int


def cert_paths(cert_dir: Path) -> tuple[Path, Path]:
    """(`server.crt`, `server.key`) in `cert_dir`."""
    return cert_dir / CERT_NAME, cert_dir / KEY_NAME


def host_names(public_address: str | None = None) -> list[str]:
    """The names a self-signed certificate should cover: hostname, localhost, loopbacks, host IPs."""
    names = ["localhost", "127.0.0.1", "::1"]
    try:
        hostname = socket.gethostname()
    except OSError:
        hostname = ""
    if hostname:
        names.insert(0, hostname)
        try:
            for info in socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP):
                names.append(str(info[4][0]).split("%")[0])
        except OSError:
            pass
    if public_address:
        names.append(public_address)
    unique: list[str] = []
    for name in names:
        if name and name not in unique:
            unique.append(name)
    return unique


def _fingerprint(cert: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    dns = [str(v) for v in san.get_values_for_type(x509.DNSName)]
    ips = [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return tuple(dns + ips)


def generate_self_signed(cert_dir: Path, names: list[str], *, now: dt.datetime) -> CertInfo:
    """Write a self-signed ECDSA P-256 certificate for `names` (DNS names and IP addresses) and its key.

    The key file is created with mode 0600. Existing files are replaced.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = cert_paths(cert_dir)
    cert_dir.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key_file, key_pem, 0o600)
    _write(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return CertInfo(cert_file, key_file, _fingerprint(cert), cert.not_valid_after_utc, _san_names(cert), 1)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CertError(path, "file not found") from None
    except OSError as exc:
        raise CertError(path, f"cannot read: {exc.strerror or exc}") from None


def check_pair(cert_file: Path, key_file: Path, *, now: dt.datetime) -> CertInfo:
    """Read and check a PEM certificate chain and its key; raises CertError naming the bad file."""
    cert_pem = _read(cert_file)
    key_pem = _read(key_file)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise CertError(cert_file, "not a PEM certificate (expected -----BEGIN CERTIFICATE-----)") from None
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise CertError(key_file, "the private key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CertError(key_file, f"not a usable PEM private key ({str(exc).splitlines()[0]})") from None
    leaf_public = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if leaf_public != key_public:
        raise CertError(key_file, f"the private key does not match the certificate in {cert_file}")
    if leaf.not_valid_after_utc <= now:
        raise CertError(
            cert_file, f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if leaf.not_valid_before_utc > now:
        raise CertError(
            cert_file,
            f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
        )
    return CertInfo(
        cert_file, key_file, _fingerprint(leaf), leaf.not_valid_after_utc, _san_names(leaf), len(chain)
    )


def new_server_context() -> ssl.SSLContext:
    """A server-side TLS context: TLS 1.2 or newer, forward-secret AEAD suites, HTTP/1.1 ALPN."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    return context


def load_into(context: ssl.SSLContext, cert_file: Path, key_file: Path, *, now: dt.datetime) -> CertInfo:
    """Check the pair, then load it into `context` (replacing its certificate for new connections)."""
    info = check_pair(cert_file, key_file, now=now)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise CertError(cert_file, f"OpenSSL refused the certificate/key pair: {exc}") from None
    return info


def ensure_certificate(
    cert_dir: Path, names: list[str], *, now: dt.datetime, force: bool = False
) -> tuple[CertInfo, bool]:
    """Check the existing pair, or create a self-signed one when both files are missing (or `force`).

    Returns the info and whether a certificate was generated. Exactly one of the two files missing is an
    error (CertError naming the missing one) rather than a silent replacement.
    """
    cert_file, key_file = cert_paths(cert_dir)
    if force or (not cert_file.exists() and not key_file.exists()):
        return generate_self_signed(cert_dir, names, now=now), True
    return check_pair(cert_file, key_file, now=now), False
