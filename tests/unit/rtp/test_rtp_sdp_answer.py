"""Offer/answer on both legs: answers to the real Chromium and Firefox offers, the SIP side's
offer/answer including hold and re-offers, and the codec map the relay consumes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.errors import NegotiationError, SdpParseError
from rtp.relay import PtRoute, Transcode
from rtp.sdp import Candidate, Connection, Direction, SessionDescription
from rtp.sdp_answer import (
    PCMA,
    PCMU,
    BrowserNegotiation,
    Codec,
    SipMedia,
    answer_browser_offer,
    answer_sip_reoffer,
    codec_map,
    offer_for_sip,
    parse_sip_answer,
)

DATA = Path(__file__).parent / "data"
CHROMIUM = (DATA / "offer_chromium156.sdp").read_bytes().decode()
FIREFOX = (DATA / "offer_firefox_esr.sdp").read_bytes().decode()
OUR_FP = ":".join(f"{i:02X}" for i in range(32))
UFRAG, PWD = "brdg", "0123456789abcdefghijkl"


def _answer(offer: str, **kw: object) -> tuple[SessionDescription, BrowserNegotiation]:
    args: dict[str, object] = {
        "ice_ufrag": UFRAG,
        "ice_pwd": PWD,
        "fingerprint_sha256": OUR_FP,
        "candidates": [("127.0.0.1", 20000), ("203.0.113.7", 20000)],
        "session_id": 4242,
    }
    args.update(kw)
    text, negotiation = answer_browser_offer(offer, **args)  # type: ignore[arg-type]
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    return SessionDescription.parse_untrusted(text), negotiation


def test_answer_to_chromium_offer_line_by_line() -> None:
    sdp, neg = _answer(CHROMIUM, ssrc=0x1234ABCD)
    assert sdp.origin.session_id == "4242"
    assert sdp.origin.session_version == "1"
    assert sdp.has("ice-lite")
    assert sdp.attribute_values("group") == ["BUNDLE 0"]
    (audio,) = sdp.media
    assert (audio.kind, audio.port, audio.proto) == ("audio", 20000, "UDP/TLS/RTP/SAVPF")
    assert audio.formats == ("0", "8", "126")
    assert audio.connection == Connection("127.0.0.1")
    assert audio.attribute("ice-ufrag") == UFRAG
    assert audio.attribute("ice-pwd") == PWD
    assert audio.attribute("fingerprint") == f"sha-256 {OUR_FP}"
    assert audio.attribute("setup") == "passive"
    assert audio.attribute("mid") == "0"
    assert sdp.direction_for(audio) is Direction.SENDRECV
    assert audio.has("rtcp-mux")
    assert audio.attribute_values("rtpmap") == ["0 PCMU/8000", "8 PCMA/8000", "126 telephone-event/8000"]
    assert audio.fmtp(126) == "0-15"
    assert audio.attribute("ptime") == "20"
    assert audio.attribute("ssrc") == f"{0x1234ABCD} cname:mccp-bridge"
    assert audio.has("end-of-candidates")
    assert audio.candidates() == [
        Candidate("1", 1, "udp", (126 << 24) | (65535 << 8) | 255, "127.0.0.1", 20000, "host"),
        Candidate("2", 1, "udp", (126 << 24) | (65534 << 8) | 255, "203.0.113.7", 20000, "host"),
    ]
    for absent in ("extmap", "rtcp-fb", "rtcp-rsize", "ice-options", "crypto"):
        assert not audio.has(absent)
    # what the ICE/DTLS side needs from the offer
    assert (neg.ice_ufrag, neg.ice_pwd) == ("Q3cp", "YUn3AKej7eJY6WKBnS6lhB3j")
    assert neg.fingerprint.algorithm == "sha-256"
    assert neg.fingerprint.value.startswith("A3:A3:36")
    assert neg.remote_setup == "actpass"
    assert neg.we_are_dtls_client is False
    assert neg.mid == "0"
    assert neg.codecs == (PCMU, PCMA)
    assert neg.telephone_event_pt == 126
    assert neg.direction is Direction.SENDRECV
    assert neg.remote_ssrcs == (2690803582,)
    assert len(neg.candidates) == 8


def test_answer_to_firefox_offer() -> None:
    sdp, neg = _answer(FIREFOX)
    (audio,) = sdp.media
    assert audio.formats == ("0", "8", "101")
    assert audio.attribute_values("rtpmap")[-1] == "101 telephone-event/8000"
    assert audio.fmtp(101) == "0-15"
    assert audio.attribute("setup") == "passive"
    assert audio.attribute("ssrc") is None
    assert sdp.attribute_values("group") == ["BUNDLE 0"]
    assert neg.fingerprint.value.startswith("64:89:")  # from the session level
    assert (neg.ice_ufrag, neg.telephone_event_pt) == ("3f9a2c1d", 101)
    assert neg.remote_ssrcs == (1028764392,)
    assert {c.component for c in neg.candidates} == {1, 2}


def test_video_and_data_channel_are_rejected_with_port_zero() -> None:
    offer = (
        CHROMIUM.replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1 2")
        + "m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=rtpmap:96 VP8/90000\r\n"
        + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:2\r\n"
    )
    sdp, neg = _answer(offer)
    audio, video, data = sdp.media
    assert audio.port == 20000
    assert (video.kind, video.port, video.formats, video.attribute("mid")) == ("video", 0, ("96",), "1")
    assert (data.kind, data.port, data.proto, data.attribute("mid")) == (
        "application",
        0,
        "UDP/DTLS/SCTP",
        "2",
    )
    assert sdp.attribute_values("group") == ["BUNDLE 0"]
    assert neg.mid == "0"


def test_second_audio_stream_rejected_and_final_answer_with_one_codec() -> None:
    offer = CHROMIUM + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:1\r\n"
    sdp, neg = _answer(offer, codecs=("PCMA",), session_version=2)
    assert [m.port for m in sdp.media] == [20000, 0]
    assert sdp.media[0].formats == ("8", "126")
    assert neg.codecs == (PCMA,)
    assert sdp.origin.session_version == "2"


def test_preference_order_is_ours() -> None:
    sdp, neg = _answer(FIREFOX, codecs=("PCMA", "PCMU"), telephone_event=False)
    assert sdp.media[0].formats == ("8", "0")
    assert neg.telephone_event_pt is None


@pytest.mark.parametrize(
    ("setup", "ours", "client"),
    [("actpass", "passive", False), ("active", "passive", False), ("passive", "active", True)],
)
def test_dtls_roles(setup: str, ours: str, client: bool) -> None:
    sdp, neg = _answer(CHROMIUM.replace("a=setup:actpass", f"a=setup:{setup}"))
    assert sdp.media[0].attribute("setup") == ours
    assert neg.we_are_dtls_client is client


@pytest.mark.parametrize(
    ("offer_dir", "answer_dir"),
    [("sendonly", "recvonly"), ("recvonly", "sendonly"), ("inactive", "inactive")],
)
def test_direction_is_mirrored(offer_dir: str, answer_dir: str) -> None:
    sdp, neg = _answer(CHROMIUM.replace("a=sendrecv", f"a={offer_dir}"))
    assert sdp.direction_for(sdp.media[0]).value == answer_dir
    assert neg.direction.value == answer_dir


def test_ipv6_first_address() -> None:
    sdp, _ = _answer(CHROMIUM, candidates=[("::1", 20002)], port=20002)
    assert sdp.media[0].connection == Connection("::1", "IP6")
    assert sdp.origin.addrtype == "IP6"


@pytest.mark.parametrize(
    ("offer", "message"),
    [
        (
            CHROMIUM.replace(" 111 63 9 0 8 13 110 126", " 111 63 9 13 110"),
            "no common audio codec: the offer has opus, red, G722, CN, telephone-event;",
        ),
        (CHROMIUM.replace("m=audio 41099", "m=audio 0"), "no active audio stream"),
        (CHROMIUM.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "not DTLS-SRTP"),
        (CHROMIUM.replace("a=rtcp-mux\r\n", ""), "rtcp-mux"),
        (CHROMIUM.replace("a=ice-pwd:YUn3AKej7eJY6WKBnS6lhB3j\r\n", ""), "ice-ufrag / a=ice-pwd"),
        (CHROMIUM.replace("a=ice-pwd:YUn3AKej7eJY6WKBnS6lhB3j", "a=ice-pwd:short"), "ice-pwd invalid"),
        (CHROMIUM.replace("a=ice-ufrag:Q3cp", "a=ice-ufrag:Q3"), "ice-ufrag 'Q3' invalid"),
        (CHROMIUM.replace("a=fingerprint:", "a=x-fingerprint:"), "no a=fingerprint"),
        (CHROMIUM.replace("a=fingerprint:sha-256 A3:", "a=fingerprint:sha-256 ZZ:"), "fingerprint"),
        (CHROMIUM.replace("a=setup:actpass", "a=setup:holdconn"), "a=setup:holdconn"),
    ],
)
def test_unusable_offers(offer: str, message: str) -> None:
    with pytest.raises(NegotiationError, match=message) as info:
        _answer(offer)
    assert info.value.status_hint == 488


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="candidate"):
        _answer(CHROMIUM, candidates=[])
    with pytest.raises(ValueError, match="fingerprint_sha256"):
        _answer(CHROMIUM, fingerprint_sha256="AB:CD")
    with pytest.raises(ValueError, match="ice-pwd"):
        _answer(CHROMIUM, ice_pwd="x")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_garbage_offers_raise_parse_or_negotiation_errors(text: str) -> None:
    with contextlib.suppress(SdpParseError, NegotiationError):
        _answer("v=0\r\no=- 1 1 IN IP4 1.1.1.1\r\ns=-\r\nt=0 0\r\n" + text)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(CHROMIUM) - 1), st.integers(1, 40), st.text(max_size=8))
def test_mangled_chromium_offer_never_crashes(at: int, cut: int, insert: str) -> None:
    with contextlib.suppress(SdpParseError, NegotiationError):
        _answer(CHROMIUM[:at] + insert + CHROMIUM[at + cut :])


# ---------------------------------------------------------------- SIP leg


def test_offer_for_sip() -> None:
    text = offer_for_sip(host="127.0.0.1", rtp_port=30000, session_id=77)
    assert text == (
        "v=0\r\no=mccp-bridge 77 1 IN IP4 127.0.0.1\r\ns=mccp-bridge\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 30000 RTP/AVP 0 8 101\r\na=rtcp:30001\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    )
    held = SessionDescription.parse_untrusted(
        offer_for_sip(
            host="::1",
            rtp_port=30002,
            session_id=77,
            session_version=2,
            codecs=(PCMA,),
            telephone_event_pt=None,
            direction=Direction.SENDONLY,
            rtcp_attribute=False,
        )
    )
    (m,) = held.media
    assert held.connection == Connection("::1", "IP6")
    assert m.formats == ("8",)
    assert held.direction_for(m) is Direction.SENDONLY
    assert m.rtcp() is None


OFFER = offer_for_sip(host="127.0.0.1", rtp_port=30000, session_id=77)


def _sip_answer(body: str, conn: str = "c=IN IP4 192.0.2.10\r\n") -> str:
    return f"v=0\r\no=phone 1 1 IN IP4 192.0.2.10\r\ns=-\r\n{conn}t=0 0\r\n{body}"


def test_parse_sip_answer_pcma_with_dtmf() -> None:
    answer = _sip_answer(
        "m=audio 4000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    media = parse_sip_answer(answer, OFFER)
    assert media == SipMedia("192.0.2.10", 4000, "192.0.2.10", 4001, (PCMA,), 101, Direction.SENDRECV)
    assert media.codec == PCMA
    assert media.we_may_send
    assert not media.on_hold


def test_parse_sip_answer_static_types_rtcp_attribute_and_renumbered_dtmf() -> None:
    answer = _sip_answer(
        "m=audio 4000 RTP/AVP 0 8 96\r\na=rtcp:5000 IN IP4 192.0.2.11\r\na=rtpmap:96 telephone-event/8000\r\n"
    )
    media = parse_sip_answer(answer, OFFER)
    assert media.codecs == (PCMU, PCMA)
    assert (media.rtcp_address, media.rtcp_port, media.telephone_event_pt) == ("192.0.2.11", 5000, 96)
    mux = parse_sip_answer(_sip_answer("m=audio 4000 RTP/AVP 0\r\na=rtcp-mux\r\n"), OFFER)
    assert (mux.rtcp_port, mux.rtcp_mux) == (4000, True)


@pytest.mark.parametrize(
    ("body", "conn", "direction"),
    [
        ("m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n", "c=IN IP4 192.0.2.10\r\n", Direction.SENDONLY),
        ("m=audio 4000 RTP/AVP 0\r\na=inactive\r\n", "c=IN IP4 192.0.2.10\r\n", Direction.INACTIVE),
        ("m=audio 4000 RTP/AVP 0\r\n", "c=IN IP4 0.0.0.0\r\n", Direction.SENDRECV),
    ],
)
def test_parse_sip_answer_hold(body: str, conn: str, direction: Direction) -> None:
    media = parse_sip_answer(_sip_answer(body, conn), OFFER)
    assert media.on_hold
    assert not media.we_may_send
    assert media.direction is direction


def test_parse_sip_answer_recvonly_is_not_hold() -> None:
    media = parse_sip_answer(_sip_answer("m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n"), OFFER)
    assert media.we_may_send
    assert not media.direction.sends


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (_sip_answer("m=audio 0 RTP/AVP 0\r\n"), "rejected the audio stream"),
        (_sip_answer("m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n"), "no codec we offered"),
        (_sip_answer("m=audio 4000 RTP/AVP 0\r\n", conn=""), "no c= address"),
        (_sip_answer("m=video 4000 RTP/AVP 0\r\n"), "not audio"),
        (_sip_answer("m=audio 4000 RTP/AVP 0\r\nm=audio 4002 RTP/AVP 0\r\n"), "2 m-lines"),
        (_sip_answer("m=audio 4000 RTP/AVP 0\r\na=rtcp:x\r\n"), "a=rtcp port"),
    ],
)
def test_parse_sip_answer_errors(answer: str, message: str) -> None:
    with pytest.raises(NegotiationError, match=message):
        parse_sip_answer(answer, OFFER)


def test_parse_sip_answer_only_offered_codecs() -> None:
    pcma_offer = offer_for_sip(host="127.0.0.1", rtp_port=30000, session_id=1, codecs=(PCMA,))
    with pytest.raises(NegotiationError, match="no codec we offered"):
        parse_sip_answer(_sip_answer("m=audio 4000 RTP/AVP 0\r\n"), pcma_offer)


def test_answer_sip_reoffer_hold_then_resume_at_a_new_address() -> None:
    hold = _sip_answer("m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n")
    text, media = answer_sip_reoffer(hold, host="127.0.0.1", rtp_port=30000, session_id=77, session_version=2)
    sdp = SessionDescription.parse_untrusted(text)
    (m,) = sdp.media
    assert sdp.origin.session_version == "2"
    assert m.formats == ("8", "101")
    assert sdp.direction_for(m) is Direction.RECVONLY
    assert m.rtcp() == (30001, None)
    assert media.on_hold
    assert media.codec == PCMA
    resume = _sip_answer("m=audio 6000 RTP/AVP 0 8\r\n", conn="c=IN IP4 198.51.100.5\r\n")
    text, media = answer_sip_reoffer(
        resume, host="127.0.0.1", rtp_port=30000, session_id=77, session_version=3, prefer="PCMA"
    )
    assert (media.address, media.rtp_port, media.rtcp_port) == ("198.51.100.5", 6000, 6001)
    assert media.codec == PCMA  # kept although PCMU is listed first
    assert not media.on_hold
    assert media.telephone_event_pt is None
    assert SessionDescription.parse_untrusted(text).media[0].formats == ("8",)


def test_answer_sip_reoffer_rejects_extra_streams_and_unusable_offers() -> None:
    offer = _sip_answer("m=video 5000 RTP/AVP 96\r\nm=audio 4000 RTP/AVP 0\r\n")
    text, media = answer_sip_reoffer(offer, host="127.0.0.1", rtp_port=30000, session_id=1, session_version=2)
    video, audio = SessionDescription.parse_untrusted(text).media
    assert (video.port, audio.port) == (0, 30000)
    assert media.rtp_port == 4000
    for bad, message in [
        (_sip_answer("m=audio 4000 RTP/AVP 18\r\n"), "no common audio codec"),
        (_sip_answer("m=audio 4000 RTP/SAVP 0\r\n"), "not RTP/AVP"),
        (_sip_answer("m=audio 0 RTP/AVP 0\r\n"), "no active audio"),
    ]:
        with pytest.raises(NegotiationError, match=message):
            answer_sip_reoffer(bad, host="127.0.0.1", rtp_port=30000, session_id=1, session_version=2)


# ---------------------------------------------------------------- codec map


def _neg(codecs: tuple[Codec, ...], te: int | None = 126) -> BrowserNegotiation:
    _, neg = _answer(CHROMIUM, codecs=tuple(c.name for c in codecs), telephone_event=te is not None)
    return neg


def _sip(codecs: tuple[Codec, ...], te: int | None = 101) -> SipMedia:
    return SipMedia("192.0.2.10", 4000, "192.0.2.10", 4001, codecs, te, Direction.SENDRECV)


def test_codec_map_same_law_no_transcoding() -> None:
    cmap = codec_map(_neg((PCMU, PCMA)), _sip((PCMU, PCMA)))
    assert cmap.to_sip == {0: PtRoute(0), 8: PtRoute(8), 126: PtRoute(101)}
    assert cmap.to_browser == {0: PtRoute(0), 8: PtRoute(8), 101: PtRoute(126)}
    assert not cmap.transcoding


def test_codec_map_sip_accepts_only_pcma() -> None:
    cmap = codec_map(_neg((PCMU, PCMA)), _sip((PCMA,)))
    assert cmap.to_sip == {0: PtRoute(8, Transcode.ULAW_TO_ALAW), 8: PtRoute(8), 126: PtRoute(101)}
    assert cmap.to_browser == {8: PtRoute(8), 101: PtRoute(126)}
    assert cmap.transcoding


def test_codec_map_browser_only_pcmu_sip_only_pcma_and_no_dtmf() -> None:
    cmap = codec_map(_neg((PCMU,), te=None), _sip((PCMA,)))
    assert cmap.to_sip == {0: PtRoute(8, Transcode.ULAW_TO_ALAW)}
    assert cmap.to_browser == {8: PtRoute(0, Transcode.ALAW_TO_ULAW)}
    cmap = codec_map(_neg((PCMU,)), _sip((PCMU,), te=None))
    assert 126 not in cmap.to_sip  # DTMF has nowhere to go in-band
    with pytest.raises(ValueError, match="at least one codec"):
        codec_map(_neg((PCMU,)), _sip(()))
