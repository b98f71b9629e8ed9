"""Calls that end by a failure: an upstream that never answers or is not there, ICE consent lost,
a DTLS fingerprint mismatch, no ICE at all, no media. Both ends checked, nothing left behind.

Shortened protocol constants: the SIP UA's T1 (Timer B = 64*T1) and the ICE+DTLS handshake
timeout are parameters of `bridge_services`; `media_timeout` is a config setting; the RFC 7675
consent timeout is the `consent_timeout` argument of `rtp.media.open_media` (passed here by
wrapping the `open_media` that bridge.call uses, as `bridge_services` has no parameter for it).
Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

import socket
from functools import partial
from pathlib import Path

import pytest
from tests.integration.calls.conftest import PASSWORD, Leaks, call_bridge, page, sipp, sipp_exit

import trio
from bridge.services import bridge_services
from rtp.media import open_media

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_port_closed(tmp_path: Path) -> None:
    """Nothing listens on the upstream's port: the ICMP port unreachable fails the INVITE's
    transaction as a transport error (RFC 3261 §18.4), so the page gets 503 at once, with the
    default T1 (Timer B would take 32 s)."""
    port = free_udp_port()
    with trio.fail_after(15):
        async with call_bridge(tmp_path, upstream=f"sip:127.0.0.1:{port}") as bridge:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                hangup = await p.wait_hangup()
                assert hangup.code == 503, hangup
                assert p.times["hangup"] - p.times["call"] < 0.5
            await leaks.check()


async def test_upstream_silent_timer_b_408(tmp_path: Path) -> None:
    """The upstream takes the INVITE and never answers: Timer A retransmits, Timer B (64*T1) -> 408."""
    services = partial(bridge_services, sip_t1=0.05)
    invites: list[float] = []

    async def blackhole_reader(sock: trio.socket.SocketType) -> None:
        while True:
            data = await sock.recv(65536)
            if data.startswith(b"INVITE "):
                invites.append(trio.current_time())

    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as blackhole:
        await blackhole.bind(("127.0.0.1", 0))
        port = blackhole.getsockname()[1]
        with trio.fail_after(15):
            async with (
                trio.open_nursery() as nursery,
                call_bridge(tmp_path, services=services, upstream=f"sip:127.0.0.1:{port}") as bridge,
            ):
                nursery.start_soon(blackhole_reader, blackhole)
                leaks = Leaks.snapshot(bridge)
                async with page(bridge) as p:
                    await p.call("100", PASSWORD, "102")
                    hangup = await p.wait_hangup()
                    assert hangup.code == 408, hangup
                    assert 64 * 0.05 - 0.5 < p.times["hangup"] - p.times["call"] < 64 * 0.05 + 2
                # RFC 3261 17.1.1.2: Timer A doubles from T1: 0, .05, .15, .35, .75, 1.55, 3.15 s
                assert 5 <= len(invites) <= 8, invites
                await leaks.check(extra_tasks=1)
                nursery.cancel_scope.cancel()


async def test_ice_consent_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser stops its consent checks (media goes on): the call ends 408 once consent expires."""
    monkeypatch.setattr("bridge.call.open_media", partial(open_media, consent_timeout=2.0))
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo") as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge, consent_interval=0.5) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.wait_media(to_receive=10)
                await trio.sleep(2.5)  # consent is kept alive past the timeout while checks go on
                assert p.hangup_message is None
                p.stop_consent()
                stopped = trio.current_time()
                hangup = await p.wait_hangup(timeout=5)
                assert hangup.code == 408, hangup
                assert "consent" in hangup.reason
                assert 1.5 < p.times["hangup"] - stopped < 3.5
            assert await sipp_exit(uas) == 0, uas.errors()
            assert "BYE sip:" in uas.messages()
            await leaks.check()


async def test_dtls_fingerprint_mismatch(tmp_path: Path) -> None:
    """The page signals a fingerprint that is not its certificate's: DTLS fails, 488, SIP CANCEL."""
    with trio.fail_after(20):
        # DTLS fails before the phone rings: the CANCEL follows its first provisional response at once.
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_ring_cancel_early") as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge, wrong_fingerprint=True) as p:
                await p.call("100", PASSWORD, "102")
                hangup = await p.wait_hangup()
                assert hangup.code == 488, hangup
                assert "fingerprint" in hangup.reason.lower(), hangup
                assert p.tx is None  # the page never got SRTP keys either
            assert await sipp_exit(uas) == 0, uas.errors()
            assert "CANCEL sip:" in uas.messages()
            await leaks.check()


async def test_browser_never_does_ice(tmp_path: Path) -> None:
    """No connectivity check ever comes: the handshake timeout (1 s here) ends the call with 408."""
    services = partial(bridge_services, handshake_timeout=1.0)
    with trio.fail_after(20):
        async with (
            call_bridge(tmp_path, services=services) as bridge,
            sipp(tmp_path, "uas_ring_cancel") as uas,
        ):
            leaks = Leaks.snapshot(bridge)
            async with page(bridge, do_ice=False) as p:
                await p.call("100", PASSWORD, "102")
                hangup = await p.wait_hangup()
                assert hangup.code == 408, hangup
                assert "ICE did not complete" in hangup.reason
            assert await sipp_exit(uas) == 0, uas.errors()
            assert "CANCEL sip:" in uas.messages()
            await leaks.check()


async def test_no_media_from_either_side(tmp_path: Path) -> None:
    """The page stops sending (so SIPp's echo stops too): media_timeout (1 s) ends the call, BYE."""
    with trio.fail_after(20):
        async with (
            call_bridge(tmp_path, media_timeout="1") as bridge,
            sipp(tmp_path, "uas_echo") as uas,
        ):
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.wait_media(to_receive=10)
                p.stop_media()
                stopped = trio.current_time()
                hangup = await p.wait_hangup(timeout=5)
                assert hangup.code == 408, hangup
                assert "no media" in hangup.reason
                assert 0.5 < p.times["hangup"] - stopped < 3
            assert await sipp_exit(uas) == 0, uas.errors()
            assert "BYE sip:" in uas.messages()
            await leaks.check()


async def test_no_media_from_the_sip_side(tmp_path: Path) -> None:
    """The page sends, the phone answers but never sends RTP: media_timeout (1 s) ends it, BYE."""
    with trio.fail_after(20):
        async with (
            call_bridge(tmp_path, media_timeout="1") as bridge,
            sipp(tmp_path, "uas_no_rtp") as uas,
        ):
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                hangup = await p.wait_hangup(timeout=5)
                assert (hangup.code, hangup.reason) == (408, "no media from the SIP side for 1 s")
                assert 0.9 < p.times["hangup"] - p.times["answer"] < 3
                assert p.sent_packets > 25  # the page did send all along
                assert p.received.packets == 0
            assert await sipp_exit(uas) == 0, uas.errors()
            assert "BYE sip:" in uas.messages()
            await leaks.check()


async def test_a_failing_call_task_ends_only_that_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in one task of an answered call (here the SIP-leg relay raising): the page gets 500,
    the phone its BYE, nothing leaks, and the bridge takes the next call."""
    from rtp.media import MediaSession

    real_run_relay = MediaSession.run_relay
    calls = 0

    async def failing_run_relay(self: MediaSession) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await trio.sleep(0.5)
            raise RuntimeError("injected relay bug")
        await real_run_relay(self)

    monkeypatch.setattr(MediaSession, "run_relay", failing_run_relay)
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo", calls=2) as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                hangup = await p.wait_hangup()
                assert (hangup.code, hangup.reason) == (500, "Server Internal Error")
            await leaks.check()
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.wait_media(to_receive=10)
                await p.hangup()
                assert (await p.wait_hangup()).code == 200
            assert await sipp_exit(uas) == 0, uas.errors()
            assert uas.messages().count("BYE sip:") == 2
            await leaks.check()


async def test_a_failing_media_handler_ends_only_that_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the code the worker's media plane runs for one call (here the SIP-leg RTP handler
    of the first call raising on its first packet): that call ends with 500, the plane goes on
    serving, and the next call's audio flows both ways."""
    from rtp.media import MediaSession

    real_handler = MediaSession._sip_rtp_datagram
    first: list[MediaSession] = []

    def failing_handler(self: MediaSession, now: float) -> bool:
        if not first:
            first.append(self)
        if self is first[0]:
            raise RuntimeError("injected media handler bug")
        return real_handler(self, now)

    monkeypatch.setattr(MediaSession, "_sip_rtp_datagram", failing_handler)
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo", calls=2) as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                hangup = await p.wait_hangup()
                assert (hangup.code, hangup.reason) == (500, "Server Internal Error")
            await leaks.check()
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.wait_media(to_receive=10)
                await p.hangup()
                assert (await p.wait_hangup()).code == 200
            assert await sipp_exit(uas) == 0, uas.errors()
            await leaks.check()


async def test_silence_on_hold_is_not_dead_media(tmp_path: Path) -> None:
    """The phone puts the call on hold (re-INVITE a=inactive) and sends nothing for 2.5 s, over the
    media_timeout (1 s): the call stays up until the phone's BYE (200 to the page)."""
    with trio.fail_after(20):
        async with (
            call_bridge(tmp_path, media_timeout="1") as bridge,
            sipp(tmp_path, "uas_hold_silent", delay_ms=2500) as uas,
        ):
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                hangup = await p.wait_hangup(timeout=8)
                assert hangup.code == 200, hangup
                assert p.times["hangup"] - p.times["answer"] > 2.4
            assert await sipp_exit(uas) == 0, uas.errors()
            trace = uas.messages()
            assert "a=inactive" in trace.split("SIP/2.0 200 OK")[-2]  # our answer to the hold
            await leaks.check()
