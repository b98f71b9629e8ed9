"""bridge.openssl_thread: OpenSSL work runs in a thread of its own, as if it were inline."""

from __future__ import annotations

import threading

import pytest

from bridge.openssl_thread import OpenSslThread
from rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, DtlsState, warm_up


def test_work_runs_in_its_thread_and_returns_or_raises_as_inline() -> None:
    thread = OpenSslThread()
    try:
        assert thread(threading.get_ident) != threading.get_ident()
        assert thread(lambda: 6 * 7) == 42
        with pytest.raises(ZeroDivisionError):
            thread(lambda: 1 // 0)
        # Work that calls back in runs inline (no deadlock on the single thread).
        inner = thread(lambda: thread(threading.get_ident))
        assert inner == thread(threading.get_ident)
    finally:
        thread.close()
    assert thread(threading.get_ident) == threading.get_ident()  # closed: inline


def test_dtls_handshakes_through_it() -> None:
    thread = OpenSslThread()
    try:
        ours = DtlsCertificate.generate("bridge", run_openssl=thread)
        assert warm_up(ours)
        peer = DtlsCertificate.generate("browser")
        server = DtlsEndpoint(DtlsRole.SERVER, ours, ("sha-256", peer.fingerprint_sha256))
        client = DtlsEndpoint(DtlsRole.CLIENT, peer, ("sha-256", ours.fingerprint_sha256))
        client.start(0.0)
        for _ in range(8):
            for datagram in client.outgoing():
                server.feed_untrusted(datagram, 0.0)
            for datagram in server.outgoing():
                client.feed_untrusted(datagram, 0.0)
        assert server.state is client.state is DtlsState.CONNECTED
        assert server.keying_material() == client.keying_material()
    finally:
        thread.close()
