"""rtp._steady (the C relay of the steady stream) against rtp.relay (the Python definition).

Each test feeds the same datagrams to a Python `Relay` and to a `SteadyRelay` + its own `Relay`
(which handles what the C code punts, then re-arms it, as rtp.media does), over datagram socket
pairs (`fuzz.steady_relay.Pair`, also the atheris target), and compares every output byte and, at
the end, every counter and statistic. SRTP is deterministic for a key and index, so the
browser-bound SRTP must match byte for byte too.
"""

from __future__ import annotations

import gc
import socket
import struct

import pytest
from fuzz.steady_relay import MAPS, Pair, rtp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Imported, not skipped: the project's install builds it (pyproject.toml), and CI must test it.
from rtp import _steady as steady
from rtp.errors import SrtpError
from rtp.srtp import SrtpProfile, srtp_pair

pytestmark = pytest.mark.timeout(60)


def pair(
    profile: SrtpProfile = SrtpProfile.AES128_CM_HMAC_SHA1_80, mapping: str = "plain", shared: bool = False
) -> Pair:
    return Pair(profile, MAPS[mapping], shared)


@pytest.mark.parametrize("shared", [False, True], ids=["twins", "shared-port"])
@pytest.mark.parametrize("profile", list(SrtpProfile))
@pytest.mark.parametrize("mapping", list(MAPS))
def test_a_steady_call_is_relayed_in_c_like_the_python_relay(
    profile: SrtpProfile, mapping: str, shared: bool
) -> None:
    with pair(profile, mapping, shared) as p:
        now = 100.0
        for i in range(200):
            now += 0.02
            got = p.from_browser(p.browser_tx.protect(rtp(0, 1000 + i, 160 * i, 0xB0B0)), now)
            assert got[0] == got[1]
            assert got[0] is not None
            pt = 8 if mapping == "transcoding" else 0
            got = p.from_sip(rtp(pt, 7 + i, 5000 + 160 * i, 0x5151), now)
            assert got[0] == got[1]
            assert got[0] is not None
            assert p.browser_rx.unprotect(got[1])[12:] == rtp(0, 0, 0, 0)[12:] or mapping == "transcoding"
        p.check_same_state()
        # Only the first packet of each direction needed Python (no source yet), then C alone.
        assert p.relay.punts == 2
        assert p.c.to_sip.packets == 200
        assert p.c.to_browser.packets == 200


def test_rtcp_stun_and_dtls_are_punted_to_python() -> None:
    with pair() as p:
        now = 10.0
        p.from_browser(p.browser_tx.protect(rtp(0, 1, 160, 0xB0B0)), now)
        p.from_sip(rtp(0, 1, 160, 0x5151), now)
        base = p.relay.punts
        stun = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, bytes(12))
        p.from_browser(stun, now)
        p.from_browser(bytes([22, 254, 253]) + bytes(20), now)  # a DTLS record
        sr = struct.pack("!BBHI", 0x80, 200, 6, 0x5151) + bytes(20)
        p.from_sip(sr, now)  # RTCP on the RTP port (RFC 5761 §4)
        assert p.relay.punts == base + 3
        p.check_same_state()


def test_disarmed_punts_everything_and_nothing_is_counted_twice() -> None:
    with pair() as p:
        p.relay.disarm()
        p.rearm = False
        for i in range(5):
            want, got = p.from_sip(rtp(0, i, 160 * i, 0x5151), 1.0 + i * 0.02)
            assert want == got
        assert p.relay.punts == 5
        p.check_same_state()


def test_arm_refuses_bad_state() -> None:
    with pair() as p:
        args = p.c.steady_args()
        assert args is not None
        srtp, to_sip, to_browser, rewrite, rec_sip, rec_browser = args
        with pytest.raises(TypeError):
            p.relay.arm(srtp, to_sip[:5], to_browser, rewrite, rec_sip, rec_browser)
        with pytest.raises(ValueError):
            p.relay.arm((0, 0, 0, 0), to_sip, to_browser, rewrite, rec_sip, rec_browser)
        assert not p.relay.armed  # a refused arm leaves it punting
        bad_routes = ((200, None), *to_sip[1:])
        with pytest.raises(ValueError):
            p.relay.arm(srtp, bad_routes, to_browser, rewrite, rec_sip, rec_browser)
        with pytest.raises(ValueError):
            steady.SteadyRelay(p.b_twin.fileno(), p.s_twin.fileno(), bytearray(10), print, print)
        with pytest.raises(TypeError):
            steady.SteadyRelay(p.b_twin.fileno(), p.s_twin.fileno(), bytes(4096), print, print)


# -- the property: any mix of well-formed, odd and hostile packets gives the same results ------------

sip_event = st.tuples(
    st.just("sip"),
    st.sampled_from([0x5151, 0x5151, 0x5151, 0x6262]),  # mostly one source, sometimes another
    st.sampled_from([1, 1, 1, 1, 2, 0, -1, -3, 50, 3001, -150, 30000]),  # sequence steps
    st.sampled_from([160, 160, 160, 320, 0, -160, 480_001, 1 << 31]),  # timestamp steps
    st.sampled_from([0, 0, 0, 8, 101, 13]),  # 13: not negotiated
    st.sampled_from([0.02, 0.02, 0.0, 0.3, 1.5]),  # time steps
    st.sampled_from(["ok", "ok", "ok", "ok", "marker", "csrc", "short", "rtcp", "garbage"]),
)
browser_event = st.tuples(
    st.just("browser"),
    st.sampled_from([0xB0B0, 0xB0B0, 0xB0B0, 0xC0C0]),
    st.sampled_from([1, 1, 1, 2, 0, -1, 3001, 40000]),
    st.sampled_from([160, 160, 0, -160, 1 << 31]),
    st.sampled_from([0, 0, 0, 8, 126, 111]),
    st.sampled_from([0.02, 0.02, 0.0, 0.5]),
    st.sampled_from(["ok", "ok", "ok", "ok", "tampered", "replayed", "csrc", "rtcp", "garbage"]),
)


def _sip_datagram(ssrc: int, seq: int, ts: int, pt: int, kind: str) -> bytes:
    match kind:
        case "marker":
            return rtp(pt, seq, ts, ssrc, marker=True)
        case "csrc":
            return bytes([0x81]) + rtp(pt, seq, ts, ssrc)[1:12] + struct.pack("!I", 77) + bytes(160)
        case "short":
            return rtp(pt, seq, ts, ssrc)[:11]
        case "rtcp":
            return struct.pack("!BBHI", 0x80, 200, 6, ssrc) + struct.pack("!IIIII", 1, 2, ts, 3, 4)
        case "garbage":
            return bytes([0x80, 0x00]) + bytes(3)
    return rtp(pt, seq, ts, ssrc)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    profile=st.sampled_from(list(SrtpProfile)),
    mapping=st.sampled_from(list(MAPS)),
    events=st.lists(st.one_of(sip_event, browser_event), min_size=1, max_size=60),
    shared=st.booleans(),
)
def test_any_packet_sequence_gives_the_python_relays_results(
    profile: SrtpProfile, mapping: str, events: list[tuple[str, int, int, int, int, float, str]], shared: bool
) -> None:
    with pair(profile, mapping, shared) as p:
        now = 50.0
        seqs: dict[int, int] = {}
        stamps: dict[int, int] = {}
        sent: list[bytes] = []
        for leg, ssrc, dseq, dts, pt, dt, kind in events:
            now += dt
            seq = seqs[ssrc] = (seqs.get(ssrc, 500) + dseq) & 0xFFFF
            ts = stamps[ssrc] = (stamps.get(ssrc, 7000) + dts) & 0xFFFFFFFF
            if leg == "sip":
                want, got = p.from_sip(_sip_datagram(ssrc, seq, ts, pt, kind), now)
            else:
                if kind == "replayed" and sent:
                    datagram = sent[-1]
                elif kind == "garbage":
                    datagram = bytes([0x80, pt]) + bytes(5)
                elif kind == "rtcp":
                    datagram = p.browser_tx.protect_rtcp(struct.pack("!BBHI", 0x80, 201, 1, ssrc))
                else:
                    plain = _sip_datagram(ssrc, seq, ts, pt, "csrc" if kind == "csrc" else "ok")
                    try:
                        datagram = p.browser_tx.protect(plain)
                    except SrtpError:  # the same index again: the browser cannot, a replay can
                        datagram = sent[-1] if sent else plain
                    if kind == "tampered":
                        datagram = datagram[:-1] + bytes([datagram[-1] ^ 1])
                    else:
                        sent.append(datagram)
                want, got = p.from_browser(datagram, now)
            assert want == got, (leg, kind)
        p.check_same_state()


def test_garbage_on_both_twins_never_raises() -> None:
    with pair() as p:
        for n in (0, 1, 2, 11, 12, 13, 2000):
            for first in (0x00, 0x80, 0x90, 0xFF):
                datagram = bytes([first]) + bytes(max(n - 1, 0)) if n else b""
                want, got = p.from_browser(datagram, 1.0)
                assert want == got
                want, got = p.from_sip(datagram, 1.0)
                assert want == got
        p.check_same_state()


def test_the_c_relay_keeps_the_owners_of_its_srtp_contexts_alive() -> None:
    """It calls libsrtp on raw context pointers: their Python owners must outlive its use of them,
    even if the relay let go of them (no use after free)."""
    with pair() as p:
        tx, rx = p.c._tx, p.c._rx
        assert tx is not None
        assert rx is not None
        held = [r for r in gc.get_referents(p.relay) if isinstance(r, tuple) and tx in r]
        assert held == [(rx, tx)]
        p.c.start_srtp(*srtp_pair(SrtpProfile.AES128_CM_HMAC_SHA1_80, bytes(30), bytes(30)))
        del tx, rx
        gc.collect()
        assert p.from_sip(rtp(0, 1, 160, 0x5151), 1.0)[1] is not None  # punted, relayed, re-armed
        assert p.from_sip(rtp(0, 2, 320, 0x5151), 1.02)[1] is not None  # relayed in C


def test_browser_dest_and_browser_in_check_their_arguments() -> None:
    with pair(shared=True) as p:
        for bad in (("127.0.0.1", 0), ("127.0.0.1", 70000), ("not-an-address", 5), ("127.0.0.1",), "x"):
            with pytest.raises((ValueError, TypeError)):
                steady.SteadyRelay(p.b_twin.fileno(), p.s_twin.fileno(), p.buf.data, print, print, bad)
        steady.SteadyRelay(p.b_twin.fileno(), p.s_twin.fileno(), p.buf.data, print, print, ("::1", 9))
        for n in (-1, len(p.buf.data) + 1):
            with pytest.raises(ValueError):
                p.relay.browser_in(n, 1.0)


def test_the_shared_port_reader_routes_to_the_relay_punts_strangers_and_reports_failures() -> None:
    """rtp._steady.SharedDemux (the shared browser port without twins): a routed address's datagrams
    go to its SteadyRelay (the same output as the Python relay), any other's to `punt` with the
    source as Python's socket module gives it; a relay whose Python handler raises is unrouted and
    reported to `failed`, and reading goes on."""
    punted: list[tuple[int, tuple[str, int], float]] = []
    failures: list[tuple[tuple[str, int], BaseException]] = []
    with pair(shared=True) as p:
        demux = steady.SharedDemux(
            p.b_twin.fileno(), p.buf.data, lambda *a: punted.append(a), lambda *a: failures.append(a), 4
        )
        browser = p.b_peer.getsockname()
        demux.route(browser, p.relay)
        assert demux.routes == 1
        now = 20.0
        for i in range(5):
            now += 0.02
            datagram = p.browser_tx.protect(rtp(0, 300 + i, 160 * i, 0xB0B0))
            want = python_reference(p, datagram, now)
            p.b_peer.sendto(datagram, p.b_twin.getsockname())
            assert demux(now) is True
            assert p.s_peer.recv(4096) == want
        assert demux(now) is False  # nothing left
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.bind(("127.0.0.1", 0))
            for _ in range(6):
                stranger.sendto(b"\x00\x01junk", p.b_twin.getsockname())
            assert demux(now) is True  # 4 read (reads=4)
            assert demux(now) is True  # the other 2
            assert [(n, src) for n, src, _ in punted] == [(6, stranger.getsockname())] * 6
        assert demux.counts == (5, 6)
        other = steady.SteadyRelay(p.b_twin.fileno(), p.s_twin.fileno(), p.buf.data, print, print)
        demux.unroute(browser, other)
        assert demux.routes == 1  # another relay's route is left alone

        def boom(n: int, now: float) -> None:
            raise RuntimeError("a bug in the call's handler")

        broken = steady.SteadyRelay(p.b_twin.fileno(), p.s_twin.fileno(), p.buf.data, boom, print, browser)
        demux.route(browser, broken)  # not armed: every datagram goes to its Python handler
        p.b_peer.sendto(b"\x80\x00" + bytes(20), p.b_twin.getsockname())
        p.b_peer.sendto(b"\x80\x00" + bytes(20), p.b_twin.getsockname())
        assert demux(now) is True
        assert [(src, str(exc)) for src, exc in failures] == [(browser, "a bug in the call's handler")]
        assert demux.routes == 0  # unrouted at its first failure: the second datagram was punted
        assert punted[-1][:2] == (22, browser)
        demux.unroute(browser)  # no route: nothing to do
        for bad in (("127.0.0.1", 0), ("host", 5), "x"):
            with pytest.raises((ValueError, TypeError)):
                demux.route(bad, p.relay)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            demux.route(browser, object())  # type: ignore[arg-type]


def python_reference(p: Pair, datagram: bytes, now: float) -> bytes | None:
    """What the Python relay (the definition) sends to SIP for this browser datagram."""
    from fuzz.steady_relay import python_browser

    p.ref_buf.data[: len(datagram)] = datagram
    return python_browser(p.ref, p.ref_buf, len(datagram), now)
