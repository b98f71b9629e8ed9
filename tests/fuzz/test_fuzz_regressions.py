"""Bugs the fuzzers found in files this suite may fix, pinned by a direct test each.

(The reproducers also sit in fuzz/corpus/<target>/crash-* and are replayed by test_fuzz_corpus.py.)
"""

from __future__ import annotations

from rtp.sdp import SessionDescription


def test_sdp_m_line_proto_ending_in_a_control_character_round_trips() -> None:
    # fuzz/corpus/sdp/crash-m-line-proto-trailing-x1d: `str.rstrip()` in Media.serialize_lines
    # dropped the \x1d that ends `proto` when the m= line has no formats.
    sdp = SessionDescription.parse_untrusted("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nm=audio 9 x\x1d\r\n")
    assert sdp.media[0].proto == "x\x1d"
    assert SessionDescription.parse_untrusted(sdp.serialize()) == sdp


def test_sdp_session_lines_out_of_rfc_order_round_trip() -> None:
    # fuzz/corpus/sdp/crash-session-lines-out-of-order: e= after k= came back before it.
    text = "v=0\r\no=- 2 1 IN IP4 127.0.0.1\r\ns=-\r\ne=a@b\r\nk=prompt\r\ne=c@d\r\n"
    sdp = SessionDescription.parse_untrusted(text)
    assert SessionDescription.parse_untrusted(sdp.serialize()) == sdp
    assert [kind for kind, _ in sdp.other] == ["e", "e", "k"]
