"""SDP parsing and serializing (RFC 8866) on real browser offers and on garbage."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp.errors import SdpParseError
from rtp.sdp import Candidate, Connection, Direction, SessionDescription

DATA = Path(__file__).parent / "data"
CHROMIUM = (DATA / "offer_chromium156.sdp").read_bytes().decode()
FIREFOX = (DATA / "offer_firefox_esr.sdp").read_bytes().decode()


@pytest.mark.parametrize("text", [CHROMIUM, FIREFOX], ids=["chromium", "firefox"])
def test_real_offers_round_trip(text: str) -> None:
    sdp = SessionDescription.parse_untrusted(text)
    assert sdp.serialize() == text
    assert SessionDescription.parse_untrusted(text.encode()) == sdp
    # a bare-LF copy parses to the same thing
    assert SessionDescription.parse_untrusted(text.replace("\r\n", "\n")) == sdp


def test_chromium_offer_fields() -> None:
    sdp = SessionDescription.parse_untrusted(CHROMIUM)
    assert sdp.origin.session_id == "5819005392309398538"
    assert sdp.origin.session_version == "2"
    assert sdp.attribute_values("group") == ["BUNDLE 0"]
    (audio,) = sdp.media
    assert (audio.kind, audio.port, audio.proto) == ("audio", 41099, "UDP/TLS/RTP/SAVPF")
    assert audio.payload_types == (111, 63, 9, 0, 8, 13, 110, 126)
    maps = audio.rtpmaps()
    assert (maps[111].encoding, maps[111].clock_rate, maps[111].channels) == ("opus", 48000, 2)
    assert (maps[126].encoding, maps[126].clock_rate) == ("telephone-event", 8000)
    assert maps[0].encoding == "PCMU"
    assert audio.fmtp(111) == "minptime=10;useinbandfec=1"
    assert audio.fmtp(0) is None
    assert audio.connection == Connection("127.0.0.1")
    assert audio.rtcp() == (9, Connection("0.0.0.0"))
    assert audio.attribute("ice-ufrag") == "Q3cp"
    assert audio.attribute("setup") == "actpass"
    assert audio.has("rtcp-mux")
    assert sdp.direction_for(audio) is Direction.SENDRECV
    fp = sdp.fingerprint_for(audio)
    assert fp is not None
    assert fp.algorithm == "sha-256"
    assert fp.value.startswith("A3:A3:36:66")
    cands = audio.candidates()
    assert len(cands) == 8
    assert cands[0] == Candidate(
        "3562553737",
        1,
        "udp",
        2122194687,
        "127.0.0.1",
        41099,
        "host",
        extensions=(("generation", "0"), ("network-id", "3"), ("network-cost", "50")),
    )
    assert cands[4].extensions[0] == ("tcptype", "active")
    assert all(Candidate.parse_untrusted(c.serialize()) == c for c in cands)
    assert sdp.attribute("msid-semantic") == "WMS c3aa49ad-5b2a-4f42-b23e-0c526d36490a"


def test_firefox_session_level_attributes() -> None:
    sdp = SessionDescription.parse_untrusted(FIREFOX)
    (audio,) = sdp.media
    assert audio.fingerprint() is None  # Firefox puts it at session level
    fp = sdp.fingerprint_for(audio)
    assert fp is not None
    assert fp.value.endswith(":3C:C0")
    assert sdp.direction() is Direction.SENDRECV
    assert audio.rtcp() == (52435, Connection("127.0.0.1"))
    assert audio.fmtp(101) == "0-15"
    assert [c.component for c in audio.candidates()] == [1, 1, 1, 1, 2, 2, 2, 2]
    assert audio.rtpmaps()[9].channels == 1


def test_direction_helpers() -> None:
    assert Direction.SENDONLY.reversed() is Direction.RECVONLY
    assert Direction.RECVONLY.reversed() is Direction.SENDONLY
    assert Direction.INACTIVE.reversed() is Direction.INACTIVE
    assert Direction.SENDRECV.sends
    assert not Direction.RECVONLY.sends
    assert not Direction.SENDONLY.receives


MINIMAL = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("x", "not '<type>=<value>'"),
        ("v=1\r\n", "first line must be 'v=0'"),
        ("v=0\r\ns=-\r\n", "must start with v=, o=, s="),
        ("v=0\r\no=- 1 1 IN IP4\r\ns=-\r\n", "o= needs 6 fields"),
        ("v=0\r\no=- x 1 IN IP4 a\r\ns=-\r\n", "numeric"),
        (MINIMAL.replace("c=IN IP4", "c=IN IPX"), "not IN IP4/IP6"),
        (MINIMAL + "y=1\r\n", "unknown line type 'y'"),
        (MINIMAL + "t=0 0\r\n", "'t=' line inside a media description"),
        (MINIMAL.replace("4000", "70000"), "m= port 70000 out of range"),
        (MINIMAL.replace("4000", "-1"), "not a number"),
        (MINIMAL.replace("RTP/AVP 0", "RTP/AVP 0 abc"), "payload type 'abc'"),
        (MINIMAL.replace("RTP/AVP 0", "RTP/AVP 0 200"), "payload type 200"),
        (MINIMAL.replace("m=audio 4000 RTP/AVP 0", "m=audio 4000"), "m= needs"),
        (MINIMAL + "a=bad name\r\n", "not a token"),
        (MINIMAL + "c=IN IP4 1.1.1.1\r\nc=IN IP4 2.2.2.2\r\n", "more than one c= line"),
        (MINIMAL.replace("s=-\r\n", "s=-\r\ns=again\r\n"), "more than one session-level 's='"),
        (MINIMAL.replace("s=-", "s=a\rb"), "CR or NUL"),
        (MINIMAL + "m=audio 1 RTP/AVP 0\r\n" * 40, "more than 32 media"),
        ("v=0\r\n" * 5000, "more than 4096"),
        ("a" * 70000, "exceeds"),
    ],
)
def test_malformed(text: str, message: str) -> None:
    with pytest.raises(SdpParseError, match=message):
        SessionDescription.parse_untrusted(text)


def test_not_utf8() -> None:
    with pytest.raises(SdpParseError, match="not UTF-8"):
        SessionDescription.parse_untrusted(MINIMAL.encode() + b"a=x:\xff\r\n")


@pytest.mark.parametrize(
    ("line", "method", "message"),
    [
        ("a=rtpmap:0 PCMU", "rtpmaps", "is not '<pt> <encoding>"),
        ("a=rtpmap:300 PCMU/8000", "rtpmaps", "out of range"),
        ("a=rtpmap:0 PCMU/x", "rtpmaps", "clock rate 'x'"),
        ("a=candidate:1 1 udp 1 1.2.3.4 5", "candidates", "8 fields"),
        ("a=candidate:1 1 udp 1 1.2.3.4 5 typ host raddr", "candidates", "without a value"),
        ("a=candidate:1 0 udp 1 1.2.3.4 5 typ host", "candidates", "component 0"),
        ("a=candidate:1 1 udp 1 1.2.3.4 99999 typ host", "candidates", "port 99999"),
        ("a=candidate:!! 1 udp 1 1.2.3.4 9 typ host", "candidates", "foundation"),
        ("a=fingerprint:sha-256 zz:11", "fingerprint", "fingerprint"),
        ("a=rtcp:x", "rtcp", "a=rtcp port"),
        ("a=rtcp:9 IN IP4", "rtcp", "a=rtcp value"),
    ],
)
def test_malformed_attributes_fail_on_use(line: str, method: str, message: str) -> None:
    (m,) = SessionDescription.parse_untrusted(MINIMAL + line + "\r\n").media
    call = getattr(m, method)
    with pytest.raises(SdpParseError, match=message):
        call()


def test_candidate_related_address_round_trip() -> None:
    c = Candidate.parse_untrusted(
        "842163049 1 udp 1677729535 203.0.113.9 55000 typ srflx raddr 10.0.0.2 rport 40000"
    )
    assert (c.type, c.related_address, c.related_port) == ("srflx", "10.0.0.2", 40000)
    assert Candidate.parse_untrusted(c.serialize()) == c


def _use_everything(sdp: SessionDescription) -> None:
    sdp.serialize()
    sdp.fingerprint()
    for m in sdp.media:
        m.rtpmaps()
        m.candidates()
        m.rtcp()
        m.fingerprint()
        sdp.direction_for(m)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_parse_error(data: bytes) -> None:
    with contextlib.suppress(SdpParseError):
        _use_everything(SessionDescription.parse_untrusted(data))


_LINES = [
    "v=0",
    "o=- 1 2 IN IP4 1.2.3.4",
    "s=-",
    "t=0 0",
    "c=IN IP4 1.2.3.4",
    "m=audio 9 UDP/TLS/RTP/SAVPF 0 8",
    "m=video 0 RTP/AVP 96",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:96 VP8/90000/2/3",
    "a=fmtp:101 0-15",
    "a=candidate:1 1 udp 5 ::1 9 typ host",
    "a=fingerprint:sha-256 AB:CD",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=sendonly",
    "a=rtcp-mux",
    "a=",
    "b=AS:64",
    "i=x",
    "k=clear:x",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_LINES) | st.text(max_size=12), max_size=14), st.sampled_from(["\r\n", "\n"]))
def test_mutated_sdp_raises_only_parse_error(lines: list[str], end: str) -> None:
    text = end.join(["v=0", "o=- 1 2 IN IP4 1.2.3.4", "s=-", *lines]) + end
    try:
        sdp = SessionDescription.parse_untrusted(text)
    except SdpParseError:
        return
    assert SessionDescription.parse_untrusted(sdp.serialize()) == sdp
    with contextlib.suppress(SdpParseError):
        _use_everything(sdp)
