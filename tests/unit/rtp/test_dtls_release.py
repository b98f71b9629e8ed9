"""DtlsEndpoint after the handshake: OpenSSL's objects are released after a grace period and the
association keeps working from a few stored bytes (keys, our final flight, our close_notify)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import pytest
from tests.support.fakenet import Datagram, FakeNet
from tests.unit.rtp.test_rtp_dtls import CLIENT_CERT, SERVER_CERT, assert_keys_match, pair, run

from rtp.dtls import (
    RELEASE_AFTER,
    DtlsEndpoint,
    DtlsRole,
    DtlsState,
    split_records_untrusted,
    warm_up,
)

T = TypeVar("T")


def connected_pair() -> tuple[DtlsEndpoint, DtlsEndpoint, float]:
    client, server = pair()
    now = run(client, server, FakeNet(seed=11))
    assert_keys_match(client, server)
    return client, server, now


def has_ccs(data: bytes) -> bool:
    return any(r[0] == 20 for r in split_records_untrusted(data) or [])


def test_openssl_is_released_once_the_grace_period_has_passed() -> None:
    client, server, now = connected_pair()
    release_at = server.release_at
    assert release_at is not None
    assert release_at == pytest.approx(now + RELEASE_AFTER, abs=0.05)
    material = server.keying_material()
    server.handle_timeout(release_at - 0.001)
    assert not server.released
    server.handle_timeout(release_at)
    assert server.released
    assert server.release_at is None
    assert server.state is DtlsState.CONNECTED
    assert server.keying_material() == material == client.keying_material()
    assert server.srtp_profile is client.srtp_profile
    assert server.next_deadline() is None
    assert not server.outgoing()  # releasing sends nothing


def test_a_datagram_after_the_grace_period_releases_too() -> None:
    _, server, now = connected_pair()
    stray = bytes([23, 0xFE, 0xFD, 0, 1]) + bytes(6) + b"\x00\x04" + bytes(4)  # epoch 1, garbage
    server.feed_untrusted(stray, now + 1.0)
    assert not server.released  # still in the grace period: OpenSSL discarded it
    server.feed_untrusted(stray, now + RELEASE_AFTER + 1.0)
    assert server.released
    server.feed_untrusted(stray, now + RELEASE_AFTER + 2.0)
    assert server.counters.after_release == 1
    assert server.state is DtlsState.CONNECTED


def test_never_released_without_a_grace_period() -> None:
    client = DtlsEndpoint(DtlsRole.CLIENT, CLIENT_CERT, ("sha-256", SERVER_CERT.fingerprint_sha256))
    server = DtlsEndpoint(
        DtlsRole.SERVER, SERVER_CERT, ("sha-256", CLIENT_CERT.fingerprint_sha256), release_after=None
    )
    run(client, server, FakeNet(seed=12))
    assert server.state is DtlsState.CONNECTED
    assert server.release_at is None
    server.handle_timeout(1e9)
    assert not server.released


def test_close_after_the_release_sends_a_close_notify_the_peer_accepts() -> None:
    client, server, now = connected_pair()
    server.handle_timeout(now + RELEASE_AFTER)
    assert server.released
    server.close()
    alerts = server.outgoing()
    assert len(alerts) == 1
    assert alerts[0][0] == 21  # an alert record, encrypted under epoch 1
    assert server.state is DtlsState.CLOSED
    for d in alerts:
        client.feed_untrusted(d, now + 10.0)
    assert client.state is DtlsState.CLOSED
    assert client.failure_reason == "peer sent close_notify"
    server.close()
    assert not server.outgoing()  # once only


def test_the_peers_close_notify_after_the_release_is_dropped_and_counted() -> None:
    """Once released we cannot authenticate the peer's records (RFC 6347 4.1.2.7: discard what
    cannot be authenticated), so its close_notify is ignored rather than trusted."""
    client, server, now = connected_pair()
    later = now + RELEASE_AFTER
    server.handle_timeout(later)
    client.close()
    for d in client.outgoing():
        server.feed_untrusted(d, later + 1.0)
    assert server.state is DtlsState.CONNECTED
    assert server.counters.after_release == 1
    assert not server.outgoing()


def test_the_peers_close_notify_in_the_grace_period_still_ends_it() -> None:
    client, server, now = connected_pair()
    client.close()
    for d in client.outgoing():
        server.feed_untrusted(d, now + 0.5)
    assert server.state is DtlsState.CLOSED
    assert server.failure_reason == "peer sent close_notify"


def test_a_final_flight_lost_until_after_the_release_is_answered_from_the_stored_copy() -> None:
    """RFC 6347 4.2.4: the server keeps answering the client's retransmitted last flight with its
    own; here every copy is lost until OpenSSL's objects are gone, and the client still completes."""
    client, server = pair()
    dropped: list[bool] = []

    def route(d: Datagram, net: FakeNet) -> list[float]:
        if d.src == "s" and has_ccs(d.data) and not server.released:
            dropped.append(True)
            return []
        return [0.01]

    run(client, server, FakeNet(route=route))
    assert len(dropped) >= 2  # the first copy and the answer to the client's first retransmission
    assert server.released
    assert server.counters.after_release >= 1
    assert_keys_match(client, server)


def test_lossy_handshakes_complete_with_an_immediate_release() -> None:
    """40 seeded lossy, duplicating, reordering runs where the server lets go of OpenSSL the
    moment it is connected: the stored final flight alone completes every client."""
    after_release = 0
    for seed in range(40):
        client = DtlsEndpoint(DtlsRole.CLIENT, CLIENT_CERT, ("sha-256", SERVER_CERT.fingerprint_sha256))
        server = DtlsEndpoint(
            DtlsRole.SERVER, SERVER_CERT, ("sha-256", CLIENT_CERT.fingerprint_sha256), release_after=0.0
        )
        run(client, server, FakeNet(seed=seed, latency=0.02, jitter=0.05, loss=0.3, duplicate=0.2))
        assert server.released
        assert_keys_match(client, server)
        after_release += server.counters.after_release
    assert after_release > 5  # the peers' retransmissions (and duplicates) did reach the released side


def test_a_released_client_keeps_its_keys_and_close_notify() -> None:
    """The bridge is the DTLS client for an a=setup:passive offer: the same release applies."""
    client = DtlsEndpoint(
        DtlsRole.CLIENT, CLIENT_CERT, ("sha-256", SERVER_CERT.fingerprint_sha256), release_after=0.0
    )
    server = DtlsEndpoint(DtlsRole.SERVER, SERVER_CERT, ("sha-256", CLIENT_CERT.fingerprint_sha256))
    now = run(client, server, FakeNet(seed=13))
    client.handle_timeout(now)
    assert client.released
    assert_keys_match(client, server)
    client.close()
    for d in client.outgoing():
        server.feed_untrusted(d, now + 1.0)
    assert server.state is DtlsState.CLOSED


def test_warm_up_handshakes_in_memory_and_leaves_the_identity_usable() -> None:
    assert warm_up(SERVER_CERT)
    # The shared context it built serves a real association afterwards.
    client, server = pair()
    run(client, server, FakeNet(seed=3))
    assert_keys_match(client, server)


def test_openssl_work_runs_where_the_identity_says_from_creation_to_release() -> None:
    # bridge.openssl_thread gives a thread of its own; here, a runner that records each call.
    ran: list[str] = []

    def runner(work: Callable[[], T]) -> T:
        ran.append(inspect.stack()[1].function)
        return work()

    ours = replace(SERVER_CERT, run_openssl=runner)
    server = DtlsEndpoint(DtlsRole.SERVER, ours, ("sha-256", CLIENT_CERT.fingerprint_sha256))
    client = DtlsEndpoint(DtlsRole.CLIENT, CLIENT_CERT, ("sha-256", ours.fingerprint_sha256))
    assert ran == ["__post_init__"]
    now = run(client, server, FakeNet(seed=5))
    assert_keys_match(client, server)
    assert "feed_untrusted" in ran
    before = len(ran)
    server.handle_timeout(now)  # not due: no OpenSSL work
    assert len(ran) == before
    release_at = server.release_at
    assert release_at is not None
    server.handle_timeout(release_at)
    assert server.released
    assert ran[-1] == "handle_timeout"
    calls = len(ran)
    server.feed_untrusted(bytes([23, 0xFE, 0xFD, 0, 1]) + bytes(6) + b"\x00\x04" + bytes(4), release_at)
    server.keying_material()
    server.close()
    assert len(ran) == calls  # released: nothing left for OpenSSL
    assert server.outgoing()  # the stored close_notify
