"""DTLS-SRTP endpoints: two of ours handshake over the fake net (lossy, duplicating, reordering),
with time driven by hand (our retransmission timer runs on the `now` we pass)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.support.fakenet import Datagram, FakeNet

from rtp.dtls import (
    INITIAL_RTO,
    MTU,
    DtlsCertificate,
    DtlsEndpoint,
    DtlsRole,
    DtlsState,
    split_records_untrusted,
)
from rtp.errors import LocalProtocolError
from rtp.srtp import SrtpProfile, SrtpRx, SrtpTx, keys_from_dtls

CLIENT_CERT = DtlsCertificate.generate("client")
SERVER_CERT = DtlsCertificate.generate("server")


def pair(
    client_expects: str | None = None, server_expects: str | None = None
) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    """A client and a server; each expects the other's real fingerprint unless told otherwise."""
    client = DtlsEndpoint(
        DtlsRole.CLIENT, CLIENT_CERT, ("sha-256", client_expects or SERVER_CERT.fingerprint_sha256)
    )
    server = DtlsEndpoint(
        DtlsRole.SERVER, SERVER_CERT, ("SHA-256", (server_expects or CLIENT_CERT.fingerprint_sha256).lower())
    )
    return client, server


def run(client: DtlsEndpoint, server: DtlsEndpoint, net: FakeNet, until: float = 120.0) -> float:
    """Drive both endpoints over `net` until neither is handshaking (or `until`); returns now."""
    ends = {"c": client, "s": server}
    peer = {"c": "s", "s": "c"}
    now = 0.0
    client.start(now)
    for _ in range(10_000):
        for name, ep in ends.items():
            for dgram in ep.outgoing():
                assert len(dgram) <= ep.mtu
                net.send(now, name, peer[name], dgram)
        if all(ep.state is not DtlsState.HANDSHAKING for ep in ends.values()) and net.next_delivery() is None:
            return now
        times = [t for t in (net.next_delivery(), client.next_deadline(), server.next_deadline()) if t]
        if not times or min(times) > until:
            return now
        now = max(now, min(times))
        for d in net.deliver_due(now):
            ends[d.dst].feed_untrusted(d.data, now)
        for ep in ends.values():
            ep.handle_timeout(now)
    raise AssertionError("no progress")


def assert_keys_match(client: DtlsEndpoint, server: DtlsEndpoint) -> None:
    assert client.state is DtlsState.CONNECTED
    assert server.state is DtlsState.CONNECTED
    assert client.srtp_profile is server.srtp_profile
    material = client.keying_material()
    assert material == server.keying_material()
    assert len(material) == client.srtp_profile.keying_material_length
    c_tx, c_rx = keys_from_dtls(client.srtp_profile, material, client.is_client)
    s_tx, s_rx = keys_from_dtls(server.srtp_profile, material, server.is_client)
    assert c_tx == s_rx
    assert c_rx == s_tx
    # and the keys really work: client protects, server unprotects
    rtp = bytes.fromhex("80000001000000a0cafebabe") + bytes(160)
    srtp = SrtpTx(client.srtp_profile, c_tx).protect(rtp)
    assert SrtpRx(server.srtp_profile, s_rx).unprotect(srtp) == rtp


def test_certificate_is_p256_with_sha256_fingerprint() -> None:
    cert = DtlsCertificate.generate()
    assert isinstance(cert.private_key.curve, ec.SECP256R1)
    fp = cert.fingerprint_sha256
    assert len(fp) == 32 * 3 - 1
    assert fp == fp.upper()
    assert fp.count(":") == 31


def test_handshake_on_a_clean_net() -> None:
    client, server = pair()
    now = run(client, server, FakeNet(seed=1))
    assert_keys_match(client, server)
    assert client.srtp_profile is SrtpProfile.AEAD_AES_128_GCM  # preferred first
    assert now < 0.2  # a few round trips of 10 ms, no retransmission
    assert client.counters.retransmits == 0
    assert server.counters.retransmits == 0
    assert client.next_deadline() is None


def test_handshake_over_lossy_duplicating_reordering_net() -> None:
    """40 seeded runs with 30 % loss, 20 % duplication and 50 ms jitter (reordering)."""
    dropped = duplicated = retransmits = 0
    for seed in range(40):
        client, server = pair()
        net = FakeNet(seed=seed, latency=0.02, jitter=0.05, loss=0.3, duplicate=0.2)
        run(client, server, net)
        assert_keys_match(client, server)
        dropped += net.stats.dropped
        duplicated += net.stats.duplicated
        retransmits += client.counters.retransmits + server.counters.retransmits
    assert dropped > 20
    assert duplicated > 10
    assert retransmits > 10


def test_lost_first_flights_are_retransmitted_with_backoff() -> None:
    """Drop everything for the first 5 s: the client re-sends its ClientHello at 1, 3 s (RFC 6347
    4.2.4: the timer doubles), and the handshake completes once the net heals."""
    sent_at: list[float] = []

    def route(d: Datagram, net: FakeNet) -> list[float]:
        return [0.01]

    client, server = pair()
    now = 0.0
    client.start(now)
    for _ in range(3):
        sent_at.append(now)
        assert client.outgoing()  # the (re)sent ClientHello, dropped
        deadline = client.next_deadline()
        assert deadline is not None
        now = deadline
        client.handle_timeout(now)
    assert sent_at == [0.0, pytest.approx(INITIAL_RTO, abs=0.01), pytest.approx(3 * INITIAL_RTO, abs=0.01)]
    assert client.counters.retransmits == 3
    run_net = FakeNet(route=route)
    for data in client.outgoing():
        run_net.send(now, "c", "s", data)
    for dgram in run_net.deliver_due(now + 1):
        server.feed_untrusted(dgram.data, now)
    assert server.outgoing()  # the server answered the retransmitted ClientHello


def test_last_flight_loss_is_recovered() -> None:
    """Drop the server's final flight (ChangeCipherSpec + Finished) once: the client's timer
    re-sends its own last flight and the server, already connected, answers it again."""
    dropped: list[Datagram] = []

    def route(d: Datagram, net: FakeNet) -> list[float]:
        records = split_records_untrusted(d.data) or []
        if d.src == "s" and any(r[0] == 20 for r in records) and not dropped:  # has CCS
            dropped.append(d)
            return []
        return [0.01]

    client, server = pair()
    run(client, server, FakeNet(route=route))
    assert dropped
    assert_keys_match(client, server)
    assert client.counters.retransmits >= 1


def test_server_checks_client_fingerprint() -> None:
    wrong = DtlsCertificate.generate().fingerprint_sha256
    client, server = pair(server_expects=wrong)
    run(client, server, FakeNet(seed=3))
    assert server.state is DtlsState.FAILED
    assert server.failure_reason == "fingerprint mismatch"
    assert client.state is DtlsState.FAILED  # it got the server's alert
    assert client.failure_reason is not None
    assert "alert" in client.failure_reason
    with pytest.raises(LocalProtocolError):
        server.keying_material()


def test_client_checks_server_fingerprint() -> None:
    client, server = pair(client_expects=CLIENT_CERT.fingerprint_sha256)
    run(client, server, FakeNet(seed=4))
    assert client.state is DtlsState.FAILED
    assert client.failure_reason == "fingerprint mismatch"
    assert server.state is DtlsState.FAILED


def test_calls_share_one_context_but_not_the_fingerprint_check() -> None:
    """One SSL.Context per certificate; each connection keeps its own expected fingerprint and
    verdict, so a mismatching call interleaved with a good one fails alone."""
    good_client, good_server = pair()
    bad_client, bad_server = pair(server_expects=SERVER_CERT.fingerprint_sha256)
    assert good_server._conn.get_context() is bad_server._conn.get_context() is SERVER_CERT.context()
    for client in (good_client, bad_client):
        client.start(0.0)
    for _ in range(10):  # both handshakes in flight at once, one flight each in turn
        for client, server in ((good_client, good_server), (bad_client, bad_server)):
            for datagram in client.outgoing():
                server.feed_untrusted(datagram, 0.0)
            for datagram in server.outgoing():
                client.feed_untrusted(datagram, 0.0)
    assert good_client.state is good_server.state is DtlsState.CONNECTED
    assert_keys_match(good_client, good_server)
    assert bad_server.state is DtlsState.FAILED
    assert bad_server.failure_reason == "fingerprint mismatch"


def test_unsupported_fingerprint_hash_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported fingerprint hash"):
        DtlsEndpoint(DtlsRole.SERVER, SERVER_CERT, ("md5", "AA:BB"))


def test_close_notify_ends_both() -> None:
    client, server = pair()
    run(client, server, FakeNet(seed=5))
    client.close()
    alerts = client.outgoing()
    assert alerts
    assert client.state is DtlsState.CLOSED
    for d in alerts:
        server.feed_untrusted(d, 1.0)
    assert server.state is DtlsState.CLOSED
    assert server.failure_reason == "peer sent close_notify"
    server.feed_untrusted(alerts[0], 2.0)
    assert server.counters.after_end == 1


def test_records_are_split_and_packed_under_mtu() -> None:
    client, server = pair()
    client.start(0.0)
    hello = client.outgoing()
    for d in hello:
        server.feed_untrusted(d, 0.0)
    flight = server.outgoing()  # ServerHello, Certificate, ServerKeyExchange, CertificateRequest, Done
    assert all(len(d) <= MTU for d in flight)
    records = [r for d in flight for r in split_records_untrusted(d) or []]
    assert len(records) >= 4
    assert b"".join(records) == b"".join(flight)


GARBAGE = [
    b"",
    b"\x16",
    b"\x16\xfe\xfd" + bytes(10),  # header with length 0 and nothing: a valid empty record
    b"\x16\xfe\xfd" + bytes(8) + b"\x00\x50" + bytes(3),  # length beyond the datagram
    b"\x17\x03\x03" + bytes(8) + b"\x00\x00",  # TLS, not DTLS, version
    b"\x30" + bytes(40),  # content type 48
    b"\x16\xfe\xfd" + bytes(8) + b"\x00\x05" + b"\x01\x00\x00\x00\x00",  # a truncated handshake
]


@pytest.mark.parametrize("data", GARBAGE)
def test_garbage_never_raises_nor_breaks_the_handshake(data: bytes) -> None:
    client, server = pair()
    client.start(0.0)
    for ep in (client, server):
        ep.feed_untrusted(data, 0.0)
    assert server.state is not DtlsState.CONNECTED
    client2, server2 = pair()
    run(client2, server2, FakeNet(seed=6))
    for ep in (client2, server2):
        ep.feed_untrusted(data, 5.0)
    assert client2.state is DtlsState.CONNECTED
    assert server2.state is DtlsState.CONNECTED


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([20, 21, 22, 23]))
def test_random_records_never_raise(body: bytes, ctype: int) -> None:
    server = DtlsEndpoint(DtlsRole.SERVER, SERVER_CERT, ("sha-256", CLIENT_CERT.fingerprint_sha256))
    record = bytes([ctype, 0xFE, 0xFD]) + bytes(8) + len(body).to_bytes(2, "big") + body
    server.feed_untrusted(record, 0.0)
    server.feed_untrusted(body, 0.0)
    server.outgoing()
    assert server.state in (DtlsState.HANDSHAKING, DtlsState.FAILED)


def test_dtls_1_0_client_is_refused() -> None:
    """RFC 8827 6.5: DTLS 1.2 only. A client capped at DTLS 1.0 gets a protocol_version alert."""
    from OpenSSL import SSL

    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_cipher_list(b"ALL:@SECLEVEL=0")  # let the old client even try
    ctx.set_max_proto_version(0xFEFF)
    old = SSL.Connection(ctx, None)
    old.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        old.do_handshake()
    hello = old.bio_read(65536)
    server = DtlsEndpoint(DtlsRole.SERVER, SERVER_CERT, ("sha-256", CLIENT_CERT.fingerprint_sha256))
    server.feed_untrusted(hello, 0.0)
    assert server.state is DtlsState.FAILED
    assert server.failure_reason is not None
    assert "unsupported protocol" in server.failure_reason
    alert = server.outgoing()
    assert alert
    assert alert[0][0] == 21  # an alert record


def run_realtime(client: DtlsEndpoint, server: DtlsEndpoint, net: FakeNet, until: float = 10.0) -> float:
    """`run`, but on the monotonic clock with real sleeps, so that OpenSSL's own (wall-clock)
    retransmission timer fires too. Returns the seconds it took."""
    ends = {"c": client, "s": server}
    peer = {"c": "s", "s": "c"}
    start = time.monotonic()
    client.start(start)
    while time.monotonic() - start < until:
        now = time.monotonic()
        for name, ep in ends.items():
            for dgram in ep.outgoing():
                assert len(dgram) <= ep.mtu
                net.send(now, name, peer[name], dgram)
        if all(ep.state is not DtlsState.HANDSHAKING for ep in ends.values()) and net.next_delivery() is None:
            break
        times = [t for t in (net.next_delivery(), client.next_deadline(), server.next_deadline()) if t]
        time.sleep(max(0.0, min(times) - time.monotonic()))
        now = time.monotonic()
        for d in net.deliver_due(now):
            ends[d.dst].feed_untrusted(d.data, now)
        for ep in ends.values():
            ep.handle_timeout(now)
    return time.monotonic() - start


def test_small_mtu_fragments_and_native_retransmission() -> None:
    """With a 300-byte MTU OpenSSL fragments the certificate flights (RFC 6347 4.2.3). Losing the
    first datagram of the client's last flight makes the server see (and discard) its early
    ChangeCipherSpec: a byte-identical re-send would be dropped by the server's replay window
    for ever. OpenSSL's own retransmission, on its wall-clock timer, carries fresh record
    sequence numbers and completes the handshake after ~1 s."""
    client = DtlsEndpoint(DtlsRole.CLIENT, CLIENT_CERT, ("sha-256", SERVER_CERT.fingerprint_sha256), mtu=300)
    server = DtlsEndpoint(DtlsRole.SERVER, SERVER_CERT, ("sha-256", CLIENT_CERT.fingerprint_sha256), mtu=300)
    client_records: list[tuple[int, int]] = []  # (epoch, sequence) of every record the client sent
    dropped: list[bytes] = []

    def route(d: Datagram, net: FakeNet) -> list[float]:
        records = split_records_untrusted(d.data) or []
        if d.src == "c":
            client_records.extend((int.from_bytes(r[3:5]), int.from_bytes(r[5:11])) for r in records)
            # the client's Certificate (handshake type 11) arrives in the last flight: lose its
            # first fragment once
            if not dropped and records[0][0] == 22 and records[0][13] == 11:
                dropped.append(d.data)
                return []
        return [0.005]

    took = run_realtime(client, server, FakeNet(route=route))
    assert dropped
    assert_keys_match(client, server)
    assert 0.9 < took < 3.0
    assert client.counters.retransmits + server.counters.retransmits >= 1
    assert len(client_records) == len(set(client_records))  # every copy has fresh sequence numbers
