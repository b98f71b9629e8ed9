"""SDP from both legs: `rtp.sdp` parsing, `answer_browser_offer`, `parse_sip_answer`, re-offers.

Contract: `SessionDescription.parse_untrusted` raises only `SdpParseError` and what it accepts
serializes and parses back to itself; the media accessors (rtpmap, fmtp, candidates, rtcp,
fingerprint, direction) raise only `SdpParseError`; the offer/answer functions raise only
`SdpParseError` or `NegotiationError` (488) on the peer's SDP, and what they produce parses.
"""

from __future__ import annotations

import contextlib

from rtp.errors import NegotiationError, SdpParseError
from rtp.sdp import SessionDescription
from rtp.sdp_answer import (
    answer_browser_offer,
    answer_sip_reoffer,
    codec_map,
    offer_for_sip,
    parse_sip_answer,
)

OUR_SIP_OFFER = offer_for_sip(host="127.0.0.1", rtp_port=30000, session_id=2)
FINGERPRINT = ":".join(["AB"] * 32)
PEER_ERRORS = (SdpParseError, NegotiationError)


def _accessors(sdp: SessionDescription) -> None:
    _ = (sdp.direction, sdp.fingerprint, sdp.attribute("group"))
    for media in sdp.media:
        _ = (media.payload_types, sdp.direction_for(media), sdp.connection_for(media))
        for call in (
            lambda m=media: m.rtpmaps,
            lambda m=media: m.candidates,
            lambda m=media: m.rtcp,
            lambda m=media: sdp.fingerprint_for(m),
            lambda m=media: [m.fmtp(pt) for pt in m.payload_types],
        ):
            with contextlib.suppress(SdpParseError):
                call()


def one_input(data: bytes) -> None:
    """Parse (bytes and text), then answer it as a browser offer, a SIP answer and a SIP re-offer."""
    try:
        sdp = SessionDescription.parse_untrusted(data)
    except SdpParseError as err:
        assert str(err)
        return
    assert SessionDescription.parse_untrusted(sdp.serialize()) == sdp, "round trip changed the SDP"
    _accessors(sdp)
    browser = None
    try:
        answer, browser = answer_browser_offer(
            sdp,
            ice_ufrag="abcd",
            ice_pwd="0123456789012345678901",
            fingerprint_sha256=FINGERPRINT,
            candidates=[("127.0.0.1", 20000)],
            session_id=1,
            ssrc=1234,
        )
    except PEER_ERRORS:
        pass
    else:
        SessionDescription.parse_untrusted(answer)
    try:
        sip = parse_sip_answer(sdp, OUR_SIP_OFFER)
    except PEER_ERRORS:
        pass
    else:
        _ = (sip.codec, sip.null_address, sip.we_may_send, sip.on_hold)
        if browser is not None:
            with contextlib.suppress(SdpParseError, NegotiationError):
                codec_map(browser, sip)
    try:
        answer, _media = answer_sip_reoffer(
            sdp, host="127.0.0.1", rtp_port=30000, session_id=2, session_version=2, prefer="PCMA"
        )
    except PEER_ERRORS:
        pass
    else:
        SessionDescription.parse_untrusted(answer)
