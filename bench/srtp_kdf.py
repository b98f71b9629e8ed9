"""SRTP session keys from a master key and salt (RFC 3711 §4.3, RFC 7714 §11), for the C blaster.

`bench/blast.c` encrypts and decrypts SRTP itself (so that each packet carries its real send time),
with OpenSSL's AES; it needs the *session* keys, which this module derives with the AES-CM PRF.
The derivation is checked against pylibsrtp by tests/integration/bench/test_bench_smoke.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from rtp.srtp import SrtpProfile

LABEL_ENCRYPTION, LABEL_AUTH, LABEL_SALT = 0, 1, 2


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """The per-direction keys one SRTP context uses (auth is empty for AEAD_AES_128_GCM)."""

    profile: SrtpProfile
    key: bytes
    salt: bytes
    auth: bytes

    @property
    def gcm(self) -> bool:
        return self.profile is SrtpProfile.AEAD_AES_128_GCM

    def line(self) -> str:
        """`gcm|cm80 KEYHEX SALTHEX AUTHHEX` for the blaster's flow file."""
        name = "gcm" if self.gcm else "cm80"
        return f"{name} {self.key.hex()} {self.salt.hex()} {self.auth.hex() or '-'}"


def _prf(master_key: bytes, master_salt: bytes, label: int, length: int) -> bytes:
    # RFC 3711 §4.3.1: x = key_id XOR master_salt (key derivation rate 0, so r = 0), the key_id
    # aligned on the low-order end of the 112-bit salt; AES-CM with IV = x * 2^16.
    # RFC 7714 §11: a 96-bit salt is padded with zeros on the low-order end to 112 bits.
    salt = master_salt.ljust(14, b"\0")
    x = int.from_bytes(salt, "big") ^ (label << 48)
    iv = (x << 16).to_bytes(16, "big")
    encryptor = Cipher(algorithms.AES(master_key), modes.CTR(iv)).encryptor()
    return encryptor.update(b"\0" * length) + encryptor.finalize()


def session_keys(profile: SrtpProfile, key_salt: bytes) -> SessionKeys:
    """Session keys of one direction from its master key || master salt (as `SrtpTx` takes)."""
    n = profile.key_length
    master_key, master_salt = key_salt[:n], key_salt[n:]
    if profile is SrtpProfile.AEAD_AES_128_GCM:
        return SessionKeys(
            profile,
            _prf(master_key, master_salt, LABEL_ENCRYPTION, 16),
            _prf(master_key, master_salt, LABEL_SALT, 12),
            b"",
        )
    return SessionKeys(
        profile,
        _prf(master_key, master_salt, LABEL_ENCRYPTION, 16),
        _prf(master_key, master_salt, LABEL_SALT, 14),
        _prf(master_key, master_salt, LABEL_AUTH, 20),
    )
