"""Datagrams on the browser port: `rtp.demux.classify`, DTLS record splitting, `DtlsEndpoint`.

Contract: `classify` never raises; `split_records_untrusted` gives None or records that join back
to the datagram; `DtlsEndpoint.feed_untrusted` / `handle_timeout` / `outgoing` never raise on any
sequence of datagrams, whether the endpoint is the DTLS server (the bridge's usual role) or the
client. The input is a sequence of datagrams, each prefixed by its 2-byte big-endian length.
"""

from __future__ import annotations

from fuzz.known import is_known
from rtp.demux import PacketKind, classify
from rtp.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, DtlsState, split_records_untrusted

CERT = DtlsCertificate.generate("fuzz")
PEER_FINGERPRINT = ("sha-256", ":".join(["AB"] * 32))


def datagrams(data: bytes) -> list[bytes]:
    """Split the length-prefixed sequence (a short last one takes the rest)."""
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(data) and len(out) < 16:
        n = int.from_bytes(data[pos : pos + 2], "big")
        out.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


def frame(*grams: bytes) -> bytes:
    """The inverse of `datagrams`, for seeds."""
    return b"".join(len(g).to_bytes(2, "big") + g for g in grams)


def one_input(data: bytes) -> None:
    """Classify and split every datagram, then feed the DTLS ones to a server and a client."""
    grams = datagrams(data)
    for gram in grams:
        kind = classify(gram)
        assert kind in PacketKind
        records = split_records_untrusted(gram)
        if records is not None:
            assert b"".join(records) == gram
            assert kind is PacketKind.DTLS
    for role in (DtlsRole.SERVER, DtlsRole.CLIENT):
        endpoint = DtlsEndpoint(role, CERT, PEER_FINGERPRINT)
        endpoint.start(0.0)
        for now, gram in enumerate(grams, start=1):
            try:
                endpoint.feed_untrusted(gram, float(now))
            except ValueError as exc:
                if is_known(exc) is None:
                    raise
                break
            endpoint.handle_timeout(float(now) + 0.5)
            for out in endpoint.outgoing():
                assert classify(out) is PacketKind.DTLS
        # Without the peer's certificate (its digest is not PEER_FINGERPRINT) it cannot connect.
        assert endpoint.state is not DtlsState.CONNECTED
        endpoint.close()
