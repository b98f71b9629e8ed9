"""SRTP through our wrapper: RFC 3711 appendix B vectors, RFC 5764 key split, both profiles.

The expected SRTP bytes are computed here independently of libsrtp, straight from the RFC
equations (RFC 3711 §4.1.1 AES-CM IV, §4.2 HMAC-SHA1, §4.3 key derivation; RFC 7714 §8.1 GCM IV)
with `cryptography`; the reference functions are first checked against the RFC 3711 B.2 and B.3
vectors.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rtp.errors import SrtpError, SrtpErrorKind
from rtp.packet import RtpPacket
from rtp.rtcp import parse_compound_untrusted
from rtp.srtp import EXPORTER_LABEL, SrtpProfile, SrtpRx, SrtpTx, keys_from_dtls

# RFC 3711 appendix B.3
B3_MASTER_KEY = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
B3_MASTER_SALT = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
B3_CIPHER_KEY = bytes.fromhex("C61E7A93744F39EE10734AFE3FF7A087")
B3_CIPHER_SALT = bytes.fromhex("30CBBC08863D8C85D49DB34A9AE1")
B3_AUTH_KEY_PREFIX = bytes.fromhex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")


def _keystream(key: bytes, iv16: bytes, n: int) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CTR(iv16)).encryptor()
    return enc.update(bytes(n)) + enc.finalize()


def _kdf(master_key: bytes, master_salt: bytes, label: int, n: int) -> bytes:
    """RFC 3711 §4.3.1 with key_derivation_rate 0; a 96-bit GCM salt is zero-padded to 112 bits."""
    x = bytearray(master_salt + bytes(14 - len(master_salt)))
    x[7] ^= label
    return _keystream(master_key, bytes(x) + b"\0\0", n)


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def _reference_cm80(master: bytes, rtp: bytes, roc: int = 0) -> bytes:
    key = _kdf(master[:16], master[16:], 0, 16)
    auth = _kdf(master[:16], master[16:], 1, 20)
    salt = _kdf(master[:16], master[16:], 2, 14)
    ssrc, seq = struct.unpack_from("!I", rtp, 8)[0], struct.unpack_from("!H", rtp, 2)[0]
    index = (roc << 16) | seq
    iv = _xor(salt + b"\0\0", bytes(4) + struct.pack("!I", ssrc) + index.to_bytes(6, "big") + b"\0\0")
    body = _xor(rtp[12:], _keystream(key, iv, len(rtp) - 12))
    tag = hmac.new(auth, rtp[:12] + body + struct.pack("!I", roc), hashlib.sha1).digest()[:10]
    return rtp[:12] + body + tag


def _reference_gcm(master: bytes, rtp: bytes, roc: int = 0) -> bytes:
    key = _kdf(master[:16], master[16:], 0, 16)
    salt = _kdf(master[:16], master[16:], 2, 12)
    ssrc, seq = struct.unpack_from("!I", rtp, 8)[0], struct.unpack_from("!H", rtp, 2)[0]
    iv = _xor(b"\0\0" + struct.pack("!IIH", ssrc, roc, seq), salt)
    return rtp[:12] + AESGCM(key).encrypt(iv, rtp[12:], rtp[:12])


def test_reference_aes_cm_matches_rfc3711_b2() -> None:
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    iv = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000")
    stream = _keystream(key, iv, 48)
    assert stream.hex().upper() == (
        "E03EAD0935C95E80E166B16DD92B4EB4D23513162B02D0F72A43A2FE4A5F97AB41E95B3BB0A2E8DD477901E4FCA894C0"
    )


def test_reference_kdf_matches_rfc3711_b3() -> None:
    assert _kdf(B3_MASTER_KEY, B3_MASTER_SALT, 0, 16) == B3_CIPHER_KEY
    assert _kdf(B3_MASTER_KEY, B3_MASTER_SALT, 2, 14) == B3_CIPHER_SALT
    assert _kdf(B3_MASTER_KEY, B3_MASTER_SALT, 1, 20) == B3_AUTH_KEY_PREFIX


def _rtp(seq: int, payload: bytes = bytes(range(160)), ssrc: int = 0xDEADBEEF) -> bytes:
    return RtpPacket(
        payload_type=0, sequence=seq, timestamp=seq * 160, ssrc=ssrc, payload=payload
    ).serialize()


@pytest.mark.parametrize("seq", [0, 1, 4660, 65535])
def test_protect_with_rfc3711_b3_master_key_gives_known_bytes(seq: int) -> None:
    master = B3_MASTER_KEY + B3_MASTER_SALT
    rtp = _rtp(seq)
    out = SrtpTx(SrtpProfile.AES128_CM_HMAC_SHA1_80, master).protect(rtp)
    assert out == _reference_cm80(master, rtp)
    assert len(out) == len(rtp) + 10
    assert SrtpRx(SrtpProfile.AES128_CM_HMAC_SHA1_80, master).unprotect(out) == rtp


def test_protect_cm80_known_answer_first_bytes() -> None:
    """A fixed known-answer vector (computed from the RFC 3711 B.3 keys), pinned as bytes."""
    master = B3_MASTER_KEY + B3_MASTER_SALT
    rtp = _rtp(1, payload=bytes(16), ssrc=0)
    out = SrtpTx(SrtpProfile.AES128_CM_HMAC_SHA1_80, master).protect(rtp)
    # With SSRC 0 and zero payload the ciphertext is the session keystream at index 1 (§4.1.1).
    iv = B3_CIPHER_SALT + b"\0\0"
    iv = _xor(iv, bytes(8) + (1).to_bytes(6, "big") + b"\0\0")
    assert out[12:28] == _keystream(B3_CIPHER_KEY, iv, 16)


def test_protect_gcm_matches_rfc7714_construction() -> None:
    master = bytes(range(16)) + bytes.fromhex("517569642070726f2071756f")
    for seq in (1, 2, 65535):
        rtp = _rtp(seq)
        tx = SrtpTx(SrtpProfile.AEAD_AES_128_GCM, master)
        out = tx.protect(rtp)
        assert out == _reference_gcm(master, rtp)
        assert len(out) == len(rtp) + 16


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_round_trip_rtp_and_rtcp(profile: SrtpProfile) -> None:
    key = bytes(range(1, 1 + profile.key_length + profile.salt_length))
    tx, rx = SrtpTx(profile, key), SrtpRx(profile, key)
    for seq in range(65530, 65536):
        rtp = _rtp(seq)
        srtp = tx.protect(rtp)
        assert len(srtp) == len(rtp) + profile.rtp_overhead
        assert srtp[12:] != rtp[12:]
        assert rx.unprotect(srtp) == rtp
    # rollover: seq wraps to 0 with ROC 1, still accepted
    wrapped = _rtp(0)
    assert rx.unprotect(tx.protect(wrapped)) == wrapped
    sr = bytes.fromhex("80c80006deadbeef") + bytes(20)
    srtcp = tx.protect_rtcp(sr)
    assert rx.unprotect_rtcp(srtcp) == sr
    assert parse_compound_untrusted(rx.unprotect_rtcp(tx.protect_rtcp(sr)))[0].ssrc == 0xDEADBEEF


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_tamper_is_auth_error(profile: SrtpProfile) -> None:
    key = bytes(profile.key_length + profile.salt_length)
    tx, rx = SrtpTx(profile, key), SrtpRx(profile, key)
    srtp = bytearray(tx.protect(_rtp(7)))
    srtp[20] ^= 1
    with pytest.raises(SrtpError) as info:
        rx.unprotect(bytes(srtp))
    assert info.value.kind is SrtpErrorKind.AUTH
    srtcp = bytearray(tx.protect_rtcp(bytes.fromhex("80c90001deadbeef")))
    srtcp[5] ^= 0x80
    with pytest.raises(SrtpError) as info:
        rx.unprotect_rtcp(bytes(srtcp))
    assert info.value.kind is SrtpErrorKind.AUTH


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_replay_is_replay_error(profile: SrtpProfile) -> None:
    key = bytes(profile.key_length + profile.salt_length)
    tx, rx = SrtpTx(profile, key), SrtpRx(profile, key)
    srtp = tx.protect(_rtp(100))
    rx.unprotect(srtp)
    with pytest.raises(SrtpError) as info:
        rx.unprotect(srtp)
    assert info.value.kind is SrtpErrorKind.REPLAY
    srtcp = tx.protect_rtcp(bytes.fromhex("80c90001deadbeef"))
    rx.unprotect_rtcp(srtcp)
    with pytest.raises(SrtpError) as info:
        rx.unprotect_rtcp(srtcp)
    assert info.value.kind is SrtpErrorKind.REPLAY
    # protecting the same index twice is refused too (allow_repeat_tx stays off)
    with pytest.raises(SrtpError) as info:
        tx.protect(_rtp(100))
    assert info.value.kind is SrtpErrorKind.REPLAY


@pytest.mark.parametrize("profile", list(SrtpProfile))
@pytest.mark.parametrize("data", [b"", b"\x80", b"\x80\x00" + bytes(3000)])
def test_garbage_is_an_srtp_error(profile: SrtpProfile, data: bytes) -> None:
    key = bytes(profile.key_length + profile.salt_length)
    tx, rx = SrtpTx(profile, key), SrtpRx(profile, key)
    for op in (tx.protect, tx.protect_rtcp, rx.unprotect, rx.unprotect_rtcp):
        with pytest.raises(SrtpError):
            op(data)


def test_profiles_lengths_and_names() -> None:
    cm, gcm = SrtpProfile.AES128_CM_HMAC_SHA1_80, SrtpProfile.AEAD_AES_128_GCM
    assert (cm.dtls_name, cm.key_length, cm.salt_length, cm.keying_material_length) == (
        "SRTP_AES128_CM_SHA1_80",
        16,
        14,
        60,
    )
    assert (gcm.dtls_name, gcm.key_length, gcm.salt_length, gcm.keying_material_length) == (
        "SRTP_AEAD_AES_128_GCM",
        16,
        12,
        56,
    )
    assert SrtpProfile.from_dtls_name(b"SRTP_AEAD_AES_128_GCM") is gcm
    assert SrtpProfile.from_dtls_name("SRTP_AES128_CM_SHA1_80") is cm
    with pytest.raises(ValueError, match="unsupported DTLS-SRTP profile"):
        SrtpProfile.from_dtls_name("SRTP_NULL_SHA1_32")
    assert SrtpProfile.dtls_offer() == b"SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"
    assert EXPORTER_LABEL == b"EXTRACTOR-dtls_srtp"


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_keys_from_dtls_layout_and_interop(profile: SrtpProfile) -> None:
    k, s = profile.key_length, profile.salt_length
    material = bytes(range(profile.keying_material_length))
    ck, sk = material[:k], material[k : 2 * k]
    cs, ss = material[2 * k : 2 * k + s], material[2 * k + s :]
    client_tx, client_rx = keys_from_dtls(profile, material, we_are_dtls_client=True)
    server_tx, server_rx = keys_from_dtls(profile, material, we_are_dtls_client=False)
    assert client_tx == ck + cs == server_rx
    assert server_tx == sk + ss == client_rx
    # what the client protects, the server unprotects and vice versa
    rtp = _rtp(9)
    assert SrtpRx(profile, server_rx).unprotect(SrtpTx(profile, client_tx).protect(rtp)) == rtp
    assert SrtpRx(profile, client_rx).unprotect(SrtpTx(profile, server_tx).protect(rtp)) == rtp
    with pytest.raises(ValueError, match="keying material"):
        keys_from_dtls(profile, material[:-1], we_are_dtls_client=True)
    with pytest.raises(ValueError, match="master key"):
        SrtpTx(profile, material[:10])
