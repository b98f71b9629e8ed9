"""The SRTP sessions of one thread share pylibsrtp's work buffer: interleaved use of many sessions
still gives every packet back intact, and another thread gets a buffer of its own."""

from __future__ import annotations

import os
import threading

from rtp.srtp import MAX_PROTECT_INPUT, SrtpProfile, SrtpRx, SrtpTx


def rtp(seq: int, ssrc: int, payload: bytes) -> bytes:
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + payload


def rtcp_rr(ssrc: int) -> bytes:
    return bytes([0x80, 201, 0, 1]) + ssrc.to_bytes(4, "big")


def key(profile: SrtpProfile) -> bytes:
    return os.urandom(profile.key_length + profile.salt_length)


def test_sessions_of_one_thread_share_the_buffer() -> None:
    profile = SrtpProfile.AEAD_AES_128_GCM
    k = key(profile)
    tx, rx = SrtpTx(profile, k), SrtpRx(profile, k)
    assert tx._session._cdata is rx._session._cdata


def test_interleaved_sessions_keep_their_packets_apart() -> None:
    """Ten calls' worth of sessions, both profiles, packets of different sizes (up to the largest
    one allowed) protected and unprotected in turn: each comes back exactly."""
    calls = []
    for i in range(10):
        profile = list(SrtpProfile)[i % 2]
        k = key(profile)
        calls.append((SrtpTx(profile, k), SrtpRx(profile, k)))
    for seq in range(1, 6):
        protected = []
        for i, (tx, _) in enumerate(calls):
            payload = bytes([i]) * (MAX_PROTECT_INPUT - 12 if i == 3 else 10 * i + seq)
            packet = rtp(seq, 1000 + i, payload)
            protected.append(
                (packet, tx.protect(packet), rtcp_rr(1000 + i), tx.protect_rtcp(rtcp_rr(1000 + i)))
            )
        for (_, rx), (packet, srtp, report, srtcp) in zip(calls, protected, strict=True):
            assert rx.unprotect(srtp) == packet
            assert rx.unprotect_rtcp(srtcp) == report


def test_another_thread_gets_its_own_buffer() -> None:
    profile = SrtpProfile.AES128_CM_HMAC_SHA1_80
    here = SrtpTx(profile, key(profile))
    there: list[tuple[SrtpTx, bytes]] = []
    packet = rtp(7, 42, b"x" * 160)

    def work() -> None:
        k = key(profile)
        tx, rx = SrtpTx(profile, k), SrtpRx(profile, k)
        there.append((tx, rx.unprotect(tx.protect(packet))))

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=10)
    assert there
    tx, roundtrip = there[0]
    assert roundtrip == packet
    assert tx._session._cdata is not here._session._cdata
