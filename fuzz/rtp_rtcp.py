"""RTP and RTCP from either leg: `rtp.packet`, `rtp.rtcp`, `rtp.dtmf`, and `rtp.relay.Relay`.

Contract: the parsers raise only `RtpParseError` / `DtmfParseError`; what `RtpPacket` accepts
serializes and parses back to itself; `rewrite_ssrcs` validates before it writes (the buffer is
untouched when it raises); and the relay never raises on any datagram from either side, valid SRTP
around garbage included: every packet is forwarded or counted as a drop, and what it forwards to the
browser unprotects to a well-formed RTP or RTCP packet.

The input is a sequence of length-prefixed datagrams (see `fuzz.dtls_demux.datagrams`); the first
byte of each picks the path (raw from the browser, SRTP/SRTCP-protected by the browser's key, the
SIP RTP port, the SIP RTCP port) and the rest is the datagram.
"""

from __future__ import annotations

import contextlib

from fuzz.dtls_demux import datagrams
from rtp.dtmf import DtmfEvent
from rtp.errors import DtmfParseError, RtpParseError, SrtpError, SrtpErrorKind
from rtp.packet import RtpPacket, check_untrusted
from rtp.relay import CodecMap, PtRoute, Relay, Transcode
from rtp.rtcp import parse_compound_untrusted, rewrite_ssrcs, walk_untrusted
from rtp.srtp import SrtpProfile, SrtpRx, SrtpTx

PROFILE = SrtpProfile.AES128_CM_HMAC_SHA1_80
BROWSER_KEY, OUR_KEY = bytes(range(30)), bytes(range(100, 130))
MAPS = (
    CodecMap(
        to_sip={0: PtRoute(0), 8: PtRoute(8), 126: PtRoute(101)},
        to_browser={0: PtRoute(0), 8: PtRoute(8), 101: PtRoute(126)},
    ),
    CodecMap(
        to_sip={0: PtRoute(8, Transcode.ULAW_TO_ALAW), 8: PtRoute(8), 126: PtRoute(101)},
        to_browser={8: PtRoute(0, Transcode.ALAW_TO_ULAW), 101: PtRoute(126)},
    ),
)


def check_parsers(data: bytes) -> None:
    """The stateless parsers on one datagram."""
    try:
        pkt = RtpPacket.parse_untrusted(data)
    except RtpParseError:
        pass
    else:
        assert RtpPacket.parse_untrusted(pkt.serialize()) == pkt
        start, end = check_untrusted(data)
        assert pkt.payload == data[start:end]
    try:
        packets = parse_compound_untrusted(data)
    except RtpParseError:
        pass
    else:
        assert b"".join(p.raw for p in packets) == data
    buf = bytearray(data)
    try:
        rewrite_ssrcs(buf, {0x11111111: 0x22222222, 0: 1}, {0: 5})
    except RtpParseError:
        assert buf == data, "rewrite_ssrcs wrote into a packet it refused"
    with contextlib.suppress(DtmfParseError):
        DtmfEvent.parse_untrusted(data[-4:])


def one_input(data: bytes) -> None:
    """Drive one relay with the datagram sequence; parse every datagram on its own too."""
    grams = datagrams(data)
    relay = Relay(
        MAPS[len(grams) % 2],
        ssrc=0x0BEEF000,
        initial_sequence=5000,
        initial_timestamp=900000,
        srtp_tx=SrtpTx(PROFILE, OUR_KEY),
        srtp_rx=SrtpRx(PROFILE, BROWSER_KEY),
    )
    browser_tx, browser_rx = SrtpTx(PROFILE, BROWSER_KEY), SrtpRx(PROFILE, OUR_KEY)
    for now, gram in enumerate(grams):
        if not gram:
            continue
        path, body = gram[0] % 4, gram[1:]
        check_parsers(body)
        t = now * 0.02
        if path == 0:
            relay.browser_packet(body, t)
        elif path == 1:
            try:
                srtp = (
                    browser_tx.protect_rtcp(body)
                    if len(body) > 1 and 192 <= body[1] <= 223
                    else (browser_tx.protect(body))
                )
            except SrtpError:
                continue
            relay.browser_packet(srtp, t)
        else:
            out = relay.sip_rtp(bytearray(body), t) if path == 2 else relay.sip_rtcp(body, t)
            if out is not None:
                try:
                    if 192 <= out[1] <= 223:
                        walk_untrusted(browser_rx.unprotect_rtcp(out))
                    else:
                        check_untrusted(browser_rx.unprotect(out))
                except SrtpError as err:  # a late packet outside the browser's replay window
                    assert err.kind is SrtpErrorKind.REPLAY, err
