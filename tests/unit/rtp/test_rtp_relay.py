"""The relay's per-packet rewriting, both directions, with real SRTP contexts on both ends."""

from __future__ import annotations

import itertools
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtp import g711
from rtp.packet import RtpPacket
from rtp.relay import CodecMap, DropCause, PtRoute, Relay, Transcode
from rtp.rtcp import RtcpType, parse_compound_untrusted
from rtp.sdp_answer import answer_browser_offer, codec_map, offer_for_sip, parse_sip_answer
from rtp.srtp import SrtpProfile, SrtpRx, SrtpTx

OUR_SSRC = 0x0BEEF000
BROWSER_SSRC = 0x22222222
PROFILE = SrtpProfile.AES128_CM_HMAC_SHA1_80
BROWSER_KEY = bytes(range(30))
OUR_KEY = bytes(range(100, 130))

PLAIN_MAP = CodecMap(
    to_sip={0: PtRoute(0), 8: PtRoute(8), 126: PtRoute(101)},
    to_browser={0: PtRoute(0), 8: PtRoute(8), 101: PtRoute(126)},
)
# The SIP side accepted only PCMA while the browser may send PCMU.
PCMA_ONLY_MAP = CodecMap(
    to_sip={0: PtRoute(8, Transcode.ULAW_TO_ALAW), 8: PtRoute(8), 126: PtRoute(101)},
    to_browser={8: PtRoute(8), 101: PtRoute(126)},
)


class Browser:
    """The browser's SRTP ends, keyed like the relay's peers."""

    def __init__(self) -> None:
        self.tx = SrtpTx(PROFILE, BROWSER_KEY)
        self.rx = SrtpRx(PROFILE, OUR_KEY)
        self.seq = 1000

    def rtp(self, pt: int, payload: bytes = b"\xff" * 160) -> bytes:
        self.seq += 1
        return self.tx.protect(RtpPacket(pt, self.seq, self.seq * 160, BROWSER_SSRC, payload).serialize())


def _relay(codec_map: CodecMap = PLAIN_MAP) -> Relay:
    return Relay(
        codec_map,
        ssrc=OUR_SSRC,
        initial_sequence=5000,
        initial_timestamp=900000,
        srtp_tx=SrtpTx(PROFILE, OUR_KEY),
        srtp_rx=SrtpRx(PROFILE, BROWSER_KEY),
    )


def _sip(
    pt: int, seq: int, ts: int, ssrc: int, payload: bytes = b"\xd5" * 160, marker: bool = False
) -> bytearray:
    return bytearray(RtpPacket(pt, seq, ts, ssrc, payload, marker).serialize())


def test_browser_to_sip_pcmu_passes_unchanged_and_dtmf_is_remapped() -> None:
    relay, browser = _relay(), Browser()
    out = relay.browser_rtp(browser.rtp(0), now=1.0)
    assert out is not None
    pkt = RtpPacket.parse_untrusted(out)
    assert (pkt.payload_type, pkt.ssrc, pkt.sequence, pkt.payload) == (0, BROWSER_SSRC, 1001, b"\xff" * 160)
    dtmf = bytes.fromhex("0a0a00a0")  # event 10 ('*'), volume 10, duration 160
    out = relay.browser_rtp(browser.rtp(126, dtmf), now=1.02)
    assert out is not None
    pkt = RtpPacket.parse_untrusted(out)
    assert (pkt.payload_type, pkt.timestamp, pkt.payload) == (101, 1002 * 160, dtmf)
    assert relay.to_sip.packets == 2
    assert relay.to_sip.octets == 172 + 16
    assert relay.to_sip.last_packet_time == 1.02
    assert relay.to_sip.dropped_total == 0


def test_browser_to_sip_drops_and_counts() -> None:
    relay, browser = _relay(), Browser()
    assert relay.browser_rtp(browser.rtp(111, b"opus"), 1.0) is None  # opus: not in the map
    assert relay.browser_rtp(browser.rtp(110), 1.0) is None  # telephone-event/48000
    good = browser.rtp(0)
    tampered = bytearray(good)
    tampered[-1] ^= 1
    assert relay.browser_rtp(bytes(tampered), 1.0) is None
    assert relay.browser_rtp(good, 1.0) is not None
    assert relay.browser_rtp(good, 1.0) is None  # replay
    assert relay.browser_rtp(b"\x80\x00", 1.0) is None
    # a correctly protected packet whose RTP padding count is beyond the packet
    assert (
        relay.browser_rtp(browser.tx.protect(bytes.fromhex("a000ffff00000000deadbeef") + b"x\x05"), 1.0)
        is None
    )
    d = relay.to_sip.dropped
    assert d[DropCause.UNKNOWN_PT] == 2
    assert d[DropCause.SRTP_AUTH] == 1
    assert d[DropCause.SRTP_REPLAY] == 1
    assert d[DropCause.MALFORMED] == 2
    assert relay.to_sip.packets == 1


def _tone(freq: float, n: int = 160, amplitude: int = 8000) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * freq * i / 8000)) for i in range(n)]


def _snr_db(ref: list[int], got: list[int]) -> float:
    noise = sum((a - b) ** 2 for a, b in zip(ref, got, strict=True))
    return 10 * math.log10(sum(a * a for a in ref) / max(noise, 1))


def test_browser_pcmu_transcoded_to_pcma() -> None:
    relay, browser = _relay(PCMA_ONLY_MAP), Browser()
    tone = _tone(1000)
    out = relay.browser_rtp(browser.rtp(0, g711.encode_ulaw(tone)), 0.0)
    assert out is not None
    pkt = RtpPacket.parse_untrusted(out)
    assert pkt.payload_type == 8
    assert _snr_db(tone, list(g711.decode_alaw(pkt.payload))) > 30
    assert PCMA_ONLY_MAP.transcoding
    assert not PLAIN_MAP.transcoding


def _to_browser(relay: Relay, buf: bytearray, now: float | None, rx: SrtpRx) -> RtpPacket | None:
    out = relay.sip_rtp(memoryview(buf), now)
    return None if out is None else RtpPacket.parse_untrusted(rx.unprotect(out))


def test_sip_to_browser_one_continuous_stream_across_ssrc_changes() -> None:
    relay, browser = _relay(), Browser()
    got = []
    t = 10.0
    for i in range(5):  # first source
        p = _to_browser(relay, _sip(0, 40000 + i, 123 + 160 * i, 0xAAAA), t, browser.rx)
        assert p is not None
        got.append(p)
        t += 0.02
    t += 0.1  # 100 ms of silence, then music on hold from another SSRC with unrelated numbers
    for i in range(3):
        p = _to_browser(relay, _sip(0, 7 + i, 99999999 + 160 * i, 0xBBBB), t, browser.rx)
        assert p is not None
        got.append(p)
        t += 0.02
    assert {p.ssrc for p in got} == {OUR_SSRC}
    assert [p.sequence for p in got] == list(range(5000, 5008))
    assert [p.timestamp for p in got[:5]] == [900000 + 160 * i for i in range(5)]
    # the new source continues at last + elapsed (20 ms frame + 100 ms gap = 960 samples)
    assert got[5].timestamp == got[4].timestamp + 960
    assert [p.timestamp for p in got[5:]] == [got[5].timestamp + 160 * i for i in range(3)]
    assert [p.marker for p in got] == [True, False, False, False, False, True, False, False]
    assert relay.stream_changes == 1
    assert relay.sip_ssrc == 0xBBBB


def test_sip_to_browser_without_now_advances_one_frame_and_handles_jumps() -> None:
    relay, browser = _relay(), Browser()
    a = _to_browser(relay, _sip(8, 100, 1000, 0xAAAA), None, browser.rx)
    # same SSRC, sequence jumps by far more than MAX_DROPOUT: treated as a new source
    b = _to_browser(relay, _sip(8, 30000, 5, 0xAAAA), None, browser.rx)
    # timestamp running backwards while the sequence advances: new source too
    c = _to_browser(relay, _sip(8, 30001, 1, 0xAAAA), None, browser.rx)
    d = _to_browser(relay, _sip(8, 30002, 161, 0xAAAA), None, browser.rx)
    assert a is not None
    assert b is not None
    assert c is not None
    assert d is not None
    assert [p.sequence for p in (a, b, c, d)] == [5000, 5001, 5002, 5003]
    assert [p.timestamp for p in (a, b, c, d)] == [900000, 900160, 900320, 900480]
    assert [p.marker for p in (a, b, c, d)] == [True, True, True, False]
    assert relay.stream_changes == 2


def test_sip_to_browser_reordering_wraparound_and_stale_stragglers() -> None:
    relay, browser = _relay(), Browser()
    seqs = [65534, 65535, 1, 0, 2]  # 0 arrives late, across the wrap
    out = [_to_browser(relay, _sip(0, s, 160 * ((s + 2) % 65536), 0xAAAA), 1.0, browser.rx) for s in seqs]
    assert all(p is not None for p in out)
    assert [p.sequence for p in out if p] == [5000, 5001, 5003, 5002, 5004]
    assert [p.timestamp for p in out if p] == [900000, 900160, 900480, 900320, 900640]
    # a duplicate cannot be protected twice: counted as a replay, not crashed on
    assert _to_browser(relay, _sip(0, 2, 160 * 4, 0xAAAA), 1.0, browser.rx) is None
    assert relay.to_browser.dropped[DropCause.SRTP_REPLAY] == 1
    # switch to source B; a straggler of A right after is dropped, later A takes over again
    assert _to_browser(relay, _sip(0, 50, 0, 0xBBBB), 2.0, browser.rx) is not None
    assert _to_browser(relay, _sip(0, 3, 160 * 5, 0xAAAA), 2.01, browser.rx) is None
    assert relay.to_browser.dropped[DropCause.STALE_STREAM] == 1
    back = _to_browser(relay, _sip(0, 1000, 0, 0xAAAA), 3.0, browser.rx)
    assert back is not None
    assert back.sequence == 5006
    assert back.marker


def test_same_ssrc_restarting_its_numbering_after_a_pause() -> None:
    relay, browser = _relay(), Browser()
    first = [
        _to_browser(relay, _sip(0, 500 + i, 160 * i, 0xAAAA), 1.0 + 0.02 * i, browser.rx) for i in range(3)
    ]
    # within RESTART_GAP a packet from behind is a late one: mapped into the past, not a new stream
    late = _to_browser(relay, _sip(0, 499, 0, 0xAAAA), 1.1, browser.rx)
    # 2 s later the same SSRC starts again from a lower sequence number: a restart
    again = _to_browser(relay, _sip(0, 480, 50, 0xAAAA), 3.1, browser.rx)
    assert late is not None
    assert again is not None
    assert [p.sequence for p in first if p] == [5000, 5001, 5002]
    assert late.sequence == 4999
    assert not late.marker
    assert again.sequence == 5003
    assert again.marker
    assert again.timestamp == 900000 + 320 + round(2.06 * 8000)


def test_sip_to_browser_pt_mapping_and_drops() -> None:
    relay, browser = _relay(), Browser()
    dtmf = _to_browser(relay, _sip(101, 1, 0, 0xAAAA, bytes.fromhex("0180000a")), 1.0, browser.rx)
    assert dtmf is not None
    assert dtmf.payload_type == 126
    assert _to_browser(relay, _sip(18, 2, 160, 0xAAAA), 1.0, browser.rx) is None  # G729 not negotiated
    assert relay.sip_rtp(bytearray(b"\x80\x00\x00"), 1.0) is None
    assert relay.sip_rtp(bytearray(b"\x00" * 20), 1.0) is None
    assert relay.to_browser.dropped[DropCause.UNKNOWN_PT] == 1
    assert relay.to_browser.dropped[DropCause.MALFORMED] == 2
    assert relay.to_browser.packets == 1
    assert relay.to_browser.last_packet_time == 1.0


def test_sip_to_browser_transcodes_when_the_browser_route_says_so() -> None:
    cmap = CodecMap(to_sip={0: PtRoute(0)}, to_browser={8: PtRoute(0, Transcode.ALAW_TO_ULAW)})
    relay, browser = _relay(cmap), Browser()
    tone = _tone(440)
    p = _to_browser(relay, _sip(8, 1, 0, 0xAAAA, g711.encode_alaw(tone)), 1.0, browser.rx)
    assert p is not None
    assert p.payload_type == 0
    assert _snr_db(tone, list(g711.decode_ulaw(p.payload))) > 30


def test_not_ready_before_keys() -> None:
    relay = Relay(PLAIN_MAP, ssrc=1, initial_sequence=0, initial_timestamp=0)
    assert relay.browser_rtp(Browser().rtp(0), 1.0) is None
    assert relay.browser_rtcp(b"\x80\xc9\x00\x01\x00\x00\x00\x01", 1.0) is None
    assert relay.sip_rtp(_sip(0, 1, 1, 1), 1.0) is None
    assert relay.sip_rtcp(b"\x80\xc9\x00\x01\x00\x00\x00\x01", 1.0) is None
    assert relay.to_sip.dropped[DropCause.NOT_READY] == 2
    assert relay.to_browser.dropped[DropCause.NOT_READY] == 2
    relay.start_srtp(SrtpTx(PROFILE, OUR_KEY), SrtpRx(PROFILE, BROWSER_KEY))
    assert relay.browser_rtp(Browser().rtp(0), 1.0) is not None


def _sr(ssrc: int, rtp_ts: int, about: int) -> bytes:
    body = struct.pack("!IQIII", ssrc, 1 << 40, rtp_ts, 10, 1600)
    body += struct.pack("!IIIIII", about, 0, 7, 3, 0, 0)
    return struct.pack("!BBH", 0x81, 200, len(body) // 4) + body


def test_rtcp_both_ways_rewrites_our_stream_ssrcs() -> None:
    relay, browser = _relay(), Browser()
    assert _to_browser(relay, _sip(0, 10, 1000, 0xAAAA), 1.0, browser.rx) is not None
    # SIP -> browser: an SR from the SIP source about the browser's stream, plus a BYE to remove
    sr = _sr(0xAAAA, 1000 + 160, BROWSER_SSRC) + struct.pack("!BBHI", 0x81, 203, 1, 0xAAAA)
    srtcp = relay.sip_rtcp(sr, 1.0)
    assert srtcp is not None
    (got,) = parse_compound_untrusted(browser.rx.unprotect_rtcp(srtcp))
    assert got.packet_type == RtcpType.SR
    assert got.ssrc == OUR_SSRC
    assert got.reports[0].ssrc == BROWSER_SSRC
    assert got.sender_info is not None
    assert got.sender_info.rtp_timestamp == 900000 + 160
    assert relay.sip_rtcp(struct.pack("!BBHI", 0x81, 203, 1, 0xAAAA), 1.0) is None  # lone BYE
    # browser -> SIP: an RR about our SSRC becomes one about the SIP source
    rr = struct.pack("!BBHI", 0x81, 201, 7, BROWSER_SSRC) + struct.pack("!IIIIII", OUR_SSRC, 0, 1, 2, 3, 4)
    out = relay.browser_rtcp(browser.tx.protect_rtcp(rr), 1.0)
    assert out is not None
    (got,) = parse_compound_untrusted(out)
    assert got.ssrc == BROWSER_SSRC
    assert got.reports[0].ssrc == 0xAAAA
    # and demultiplexed from the one browser port
    routed = relay.browser_packet(browser.tx.protect_rtcp(rr), 1.0)
    assert routed is not None
    assert routed[0] is True
    routed = relay.browser_packet(browser.rtp(0), 1.0)
    assert routed is not None
    assert routed[0] is False
    # RTCP arriving on the SIP RTP port is recognised as RTCP
    assert relay.sip_rtp(bytearray(_sr(0xAAAA, 0, BROWSER_SSRC)), 1.0) is not None
    assert relay.to_browser.rtcp_packets == 2
    assert relay.to_sip.rtcp_packets == 2
    assert relay.sip_rtcp(b"\x80\xc9\x00\x09", 1.0) is None
    assert relay.browser_rtcp(b"garbage", 1.0) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises(data: bytes) -> None:
    relay = _relay()
    assert relay.browser_rtp(data, 0.0) is None
    relay.browser_rtcp(data, 0.0)
    relay.browser_packet(data, 0.0)
    relay.sip_rtp(bytearray(data), 0.0)
    relay.sip_rtcp(data, 0.0)
    relay.sip_rtp(memoryview(bytearray(data)), None)
    total = relay.to_sip.dropped_total + relay.to_sip.packets + relay.to_sip.rtcp_packets
    assert total >= 2


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_both_profiles_end_to_end(profile: SrtpProfile) -> None:
    bk, ok = (
        bytes(profile.key_length + profile.salt_length),
        bytes(range(profile.key_length + profile.salt_length)),
    )
    relay = Relay(
        PLAIN_MAP,
        ssrc=OUR_SSRC,
        initial_sequence=1,
        initial_timestamp=1,
        srtp_tx=SrtpTx(profile, ok),
        srtp_rx=SrtpRx(profile, bk),
    )
    rtp = RtpPacket(0, 1, 1, BROWSER_SSRC, b"\x01" * 160).serialize()
    assert relay.browser_rtp(SrtpTx(profile, bk).protect(rtp), 0.0) == rtp
    out = relay.sip_rtp(_sip(0, 1, 1, 0xAAAA), 0.0)
    assert out is not None
    assert RtpPacket.parse_untrusted(SrtpRx(profile, ok).unprotect(out)).ssrc == OUR_SSRC


@st.composite
def _segments(draw: st.DrawFn) -> list[tuple[int, int, int, int]]:
    """Runs of in-order packets, each run from another SSRC than the previous one."""
    out: list[tuple[int, int, int, int]] = []
    prev: int | None = None
    for _ in range(draw(st.integers(1, 6))):
        ssrc = draw(st.sampled_from([s for s in (0xA, 0xB, 0xC) if s != prev]))
        out.append(
            (ssrc, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 12)))
        )
        prev = ssrc
    return out


@settings(max_examples=150, deadline=None)
@given(_segments(), st.booleans())
def test_sip_to_browser_output_is_one_gapless_stream(
    segments: list[tuple[int, int, int, int]], with_now: bool
) -> None:
    relay, browser = _relay(), Browser()
    now = 100.0
    got: list[RtpPacket] = []
    for ssrc, seq0, ts0, count in segments:
        for i in range(count):
            p = _to_browser(
                relay,
                _sip(0, (seq0 + i) & 0xFFFF, (ts0 + 160 * i) & 0xFFFFFFFF, ssrc),
                now if with_now else None,
                browser.rx,
            )
            now += 0.02
            if p is not None:
                got.append(p)
        now += 0.6  # longer than STALE_GRACE: coming back to an earlier SSRC is a real switch
    assert relay.to_browser.dropped_total == 0
    assert len(got) == relay.to_browser.packets
    assert {p.ssrc for p in got} == {OUR_SSRC}
    assert [p.sequence for p in got] == [(5000 + i) & 0xFFFF for i in range(len(got))]
    steps = [(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(got)]
    assert all(160 <= s <= 8000 * 2 for s in steps)


def test_whole_call_from_real_offer_to_relay() -> None:
    """Chromium's offer -> our answer; our SIP offer -> a PCMA-only answer -> codec map -> relay."""
    offer = (Path(__file__).parent / "data" / "offer_chromium156.sdp").read_bytes().decode()
    _, neg = answer_browser_offer(
        offer,
        ice_ufrag="abcd",
        ice_pwd="0123456789012345678901",
        fingerprint_sha256=":".join(["00"] * 32),
        candidates=[("127.0.0.1", 20000)],
        session_id=1,
    )
    sip_offer = offer_for_sip(host="127.0.0.1", rtp_port=30000, session_id=2)
    sip = parse_sip_answer(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 4000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        sip_offer,
    )
    relay, browser = _relay(codec_map(neg, sip)), Browser()
    tone = _tone(1000)
    out = relay.browser_rtp(browser.rtp(0, g711.encode_ulaw(tone)), 0.0)  # Chrome sends PCMU first
    assert out is not None
    pkt = RtpPacket.parse_untrusted(out)
    assert pkt.payload_type == 8
    assert _snr_db(tone, list(g711.decode_alaw(pkt.payload))) > 30
    out = relay.browser_rtp(browser.rtp(126, bytes.fromhex("0b0a00a0")), 0.02)
    assert out is not None
    assert RtpPacket.parse_untrusted(out).payload_type == 101
    back = _to_browser(relay, _sip(101, 9, 9, 0xAAAA, bytes.fromhex("0b8a0320")), 0.04, browser.rx)
    assert back is not None
    assert back.payload_type == 126
    back = _to_browser(relay, _sip(8, 10, 809, 0xAAAA), 0.06, browser.rx)
    assert back is not None
    assert back.payload_type == 8
