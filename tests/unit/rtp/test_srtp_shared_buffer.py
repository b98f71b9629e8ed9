"""`srtp_pair`: one call's two SRTP directions share pylibsrtp's work buffer; packets protected
and unprotected in turn through both still come back intact, and separate calls stay apart."""

from __future__ import annotations

import os

import pytest

from rtp.errors import SrtpError, SrtpErrorKind
from rtp.srtp import MAX_PROTECT_INPUT, PacketBuffer, SrtpProfile, SrtpRx, SrtpTx, srtp_pair


def rtp(seq: int, ssrc: int, payload: bytes) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + payload


def rtcp_rr(ssrc: int) -> bytes:
    return bytes([0x80, 201, 0, 1]) + ssrc.to_bytes(4, "big")


def key(profile: SrtpProfile) -> bytes:
    return os.urandom(profile.key_length + profile.salt_length)


def test_a_pair_shares_one_buffer_and_separate_sessions_do_not() -> None:
    profile = SrtpProfile.AEAD_AES_128_GCM
    tx, rx = srtp_pair(profile, key(profile), key(profile))
    assert tx._session._cdata is rx._session._cdata
    other_tx, _ = srtp_pair(profile, key(profile), key(profile))
    assert other_tx._session._cdata is not tx._session._cdata
    assert SrtpTx(profile, key(profile))._session._cdata is not SrtpRx(profile, key(profile))._session._cdata


def test_both_directions_in_turn_keep_their_packets_apart() -> None:
    """Both profiles; each packet is protected by one call's tx and unprotected by its peer's rx
    while the pair's other direction works in between, sizes up to the largest allowed."""
    for profile in SrtpProfile:
        ours_key, theirs_key = key(profile), key(profile)
        ours_tx, ours_rx = srtp_pair(profile, ours_key, theirs_key)
        theirs_tx, theirs_rx = srtp_pair(profile, theirs_key, ours_key)
        for seq in range(1, 8):
            size = MAX_PROTECT_INPUT - 12 if seq == 3 else 20 * seq
            out, back = rtp(seq, 1, bytes([seq]) * size), rtp(seq, 2, bytes([0x80 | seq]) * (size // 2))
            srtp_out = ours_tx.protect(out)
            srtp_back = theirs_tx.protect(back)
            srtcp_out = ours_tx.protect_rtcp(rtcp_rr(1))
            assert ours_rx.unprotect(srtp_back) == back
            assert theirs_rx.unprotect(srtp_out) == out
            assert theirs_rx.unprotect_rtcp(srtcp_out) == rtcp_rr(1)
            assert ours_rx.unprotect_rtcp(theirs_tx.protect_rtcp(rtcp_rr(2))) == rtcp_rr(2)


def test_bytes_like_packets_and_libsrtp_statuses_through_the_direct_binding() -> None:
    """`SrtpTx`/`SrtpRx` call libsrtp themselves (rtp.srtp `_Direct`): a memoryview or bytearray
    packet is taken as is, equals pylibsrtp's own result, and libsrtp's statuses become the
    SrtpError kinds the relay counts (REPLAY, AUTH, MALFORMED)."""
    import pylibsrtp
    import pytest

    from rtp.errors import SrtpError, SrtpErrorKind

    profile = SrtpProfile.AES128_CM_HMAC_SHA1_80
    k = key(profile)
    tx = SrtpTx(profile, k)
    outbound = pylibsrtp.Policy.SSRC_ANY_OUTBOUND
    policy = pylibsrtp.Policy(key=k, ssrc_type=outbound, srtp_profile=profile._libsrtp_profile)
    reference = pylibsrtp.Session(policy=policy)
    buf = bytearray(2048)
    packet = rtp(7, 0x1234, b"\x55" * 160)
    buf[: len(packet)] = packet
    protected = tx.protect(memoryview(buf)[: len(packet)])
    assert protected == reference.protect(packet)
    rx = SrtpRx(profile, k)
    assert rx.unprotect(bytearray(protected)) == packet
    with pytest.raises(SrtpError) as replay:
        rx.unprotect(protected)
    assert replay.value.kind is SrtpErrorKind.REPLAY
    forged = bytearray(tx.protect(rtp(8, 0x1234, b"\x55" * 160)))
    forged[-1] ^= 1
    with pytest.raises(SrtpError) as auth:
        rx.unprotect(forged)
    assert auth.value.kind is SrtpErrorKind.AUTH
    for bad in (b"", b"\x80", bytes(MAX_PROTECT_INPUT + 1)):
        with pytest.raises(SrtpError) as malformed:
            tx.protect(bad)
        assert malformed.value.kind is SrtpErrorKind.MALFORMED


def test_in_place_on_a_packet_buffer_matches_the_bytes_api() -> None:
    """`protect_in`/`unprotect_in` give the bytes of `protect`/`unprotect`, where the packet is."""
    for profile in SrtpProfile:
        k1, k2 = key(profile), key(profile)
        by_bytes, _ = srtp_pair(profile, k1, k2)
        in_place, _ = srtp_pair(profile, k1, k2)
        _, peer_rx = srtp_pair(profile, k2, k1)
        buf = PacketBuffer(512)
        for seq in range(1, 6):
            packet = rtp(seq, 0x1234, os.urandom(20 * seq))
            buf.data[: len(packet)] = packet
            m = in_place.protect_in(buf, len(packet))
            assert bytes(buf.view[:m]) == by_bytes.protect(packet)
            assert peer_rx.unprotect_in(buf, m) == len(packet)
            assert bytes(buf.view[: len(packet)]) == packet
        buf.data[:100] = bytes(100)  # an unauthentic packet: refused, counted as AUTH
        with pytest.raises(SrtpError) as forged:
            peer_rx.unprotect_in(buf, 100)
        assert forged.value.kind is SrtpErrorKind.AUTH
        with pytest.raises(SrtpError) as too_long:  # no room left for the trailer
            in_place.protect_in(buf, len(buf) - 100)
        assert too_long.value.kind is SrtpErrorKind.MALFORMED
