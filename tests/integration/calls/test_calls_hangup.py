"""Every way a call ends from one of its two ends, with both ends checked and nothing left behind.

The page is the synthetic browser (MCCP over WSS, ICE, DTLS-SRTP), the phone is SIPp reached in
upstream mode. For each ending: what the page got over MCCP (the `hangup` code and reason), what
SIPp saw (its exit status and its message trace: CANCEL + 487, BYE, ACK of a rejection), and that
the bridge is back where it was (no active call, media ports bindable, fds and tasks back).
Run inside scripts/netns_run.sh (SIPp's fixed port 5090).
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
from pathlib import Path

import pytest
from tests.integration.calls.conftest import PASSWORD, Leaks, call_bridge, page, sipp, sipp_exit

import trio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

SETUP_TO_INVITE: list[float] = []
OK_TO_ANSWER: list[float] = []


def sipp_times(messages: str) -> list[tuple[float, str, str]]:
    """(wall time, "sent"/"received", first line) of each message in SIPp's -trace_msg log."""
    out = []
    pattern = (
        r"^-+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d+)\n"
        r"(?:UDP|TCP) message (sent|received)[^\n]*\n\n([^\r\n]+)"
    )
    for m in re.finditer(pattern, messages, re.M):
        stamp, fraction, way, first = m.groups()
        wall = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + float(fraction)
        out.append((wall, way, first.strip()))
    return out


async def test_page_hangs_up_after_the_answer_bye(tmp_path: Path) -> None:
    await answered_call_then_bye(tmp_path, "uas_echo")


async def answered_call_then_bye(tmp_path: Path, scenario: str, delay_ms: int | None = None) -> None:
    """An answered call with media both ways (SIPp echoes our tone), the page hangs up; figures."""
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, scenario, delay_ms=delay_ms) as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.wait_media(to_receive=25, to_send=25)
                freq, level = p.heard()
                assert abs(freq - 440) < 10, (freq, level)  # SIPp echoes our own tone
                await p.hangup()
                hangup = await p.wait_hangup()
                assert (hangup.code, hangup.reason) == (200, "hung up by the caller")
                await p.wait_until(p.ws_closed.is_set)
            assert await sipp_exit(uas) == 0, uas.errors()
            trace = uas.messages()
            assert "BYE sip:" in trace
            await leaks.check()
    # the figures: page's call -> SIPp's INVITE, SIPp's 200 -> page's answer
    times = sipp_times(trace)
    invite = next(t for t, way, line in times if way == "received" and line.startswith("INVITE"))
    ok = next(t for t, way, line in times if way == "sent" and line.startswith("SIP/2.0 200"))
    SETUP_TO_INVITE.append(invite - p.wall["call"])
    OK_TO_ANSWER.append(p.wall["answer"] - ok)


@pytest.mark.parametrize("run", range(5))
async def test_call_setup_figures(tmp_path: Path, run: int) -> None:
    """Answered calls for the median figures (printed with -s). The phone rings 300 ms first, so
    that the 200 -> answer figure is not mixed with the page's ICE/DTLS handshake (same process)."""
    if run == 0:
        SETUP_TO_INVITE.clear()
        OK_TO_ANSWER.clear()
    await answered_call_then_bye(tmp_path, "uas_ring_delay", delay_ms=300)
    if run == 4:
        print(
            f"\npage call -> SIPp INVITE: median {statistics.median(SETUP_TO_INVITE) * 1000:.1f} ms "
            f"over {len(SETUP_TO_INVITE)}; SIPp 200 -> page answer: median "
            f"{statistics.median(OK_TO_ANSWER) * 1000:.1f} ms "
            f"({[round(x * 1000, 1) for x in SETUP_TO_INVITE]}, {[round(x * 1000, 1) for x in OK_TO_ANSWER]})"
        )
        assert statistics.median(SETUP_TO_INVITE) < 1.0
        assert statistics.median(OK_TO_ANSWER) < 1.0


async def test_page_hangs_up_before_the_answer_cancel(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_ring_cancel") as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("ringing")
                await p.hangup()
                hangup = await p.wait_hangup()
                assert hangup.code == 487, hangup
                assert "answer" not in p.kinds
            assert await sipp_exit(uas) == 0, uas.errors()
            trace = uas.messages()
            assert "CANCEL sip:" in trace
            assert "SIP/2.0 487 Request Terminated" in trace
            assert "ACK sip:" in trace
            await leaks.check()


@pytest.mark.parametrize("answered", [False, True], ids=["before-answer", "after-answer"])
async def test_page_socket_closes_abruptly(tmp_path: Path, answered: bool) -> None:
    scenario = "uas_echo" if answered else "uas_ring_cancel"
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, scenario) as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer" if answered else "ringing")
                if answered:
                    await p.wait_media(to_receive=10)
                await p.close_abruptly()
                assert p.hangup_message is None  # nothing could reach the page
            assert await sipp_exit(uas) == 0, uas.errors()
            trace = uas.messages()
            if answered:
                assert "BYE sip:" in trace
            else:
                assert "CANCEL sip:" in trace
                assert "SIP/2.0 487" in trace
            await leaks.check()


@pytest.mark.parametrize(
    ("code", "reason"),
    [(486, "Busy Here"), (603, "Decline"), (404, "Not Found"), (480, "Temporarily Unavailable")],
)
async def test_phone_rejects(tmp_path: Path, code: int, reason: str) -> None:
    with trio.fail_after(20):
        async with (
            call_bridge(tmp_path) as bridge,
            sipp(tmp_path, "uas_reject", code=str(code), reason=reason) as uas,
        ):
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                hangup = await p.wait_hangup()
                assert (hangup.code, hangup.reason) == (code, reason)
                assert "answer" not in p.kinds
            assert await sipp_exit(uas) == 0, uas.errors()  # it got the ACK of its final response
            await leaks.check()


async def test_phone_hangs_up_bye(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_bye_after", delay_ms=1000) as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                hangup = await p.wait_hangup(timeout=5)
                assert hangup.code == 200, hangup
                assert p.sent_packets > 0
            assert await sipp_exit(uas) == 0, uas.errors()  # its BYE got our 200
            assert "SIP/2.0 200 OK" in uas.messages().split("BYE sip:")[-1]
            await leaks.check()


async def test_no_answer_within_the_ring_timeout(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with (
            call_bridge(tmp_path, ring_timeout="1") as bridge,
            sipp(tmp_path, "uas_ring_cancel") as uas,
        ):
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("ringing")
                hangup = await p.wait_hangup(timeout=5)
                assert hangup.code == 480, hangup
                assert "no answer within 1s" in hangup.reason
                assert p.times["hangup"] - p.times["call"] < 3
            assert await sipp_exit(uas) == 0, uas.errors()
            assert "CANCEL sip:" in uas.messages()
            await leaks.check()


async def test_page_closes_politely_after_the_answer(tmp_path: Path) -> None:
    """The tab is closed: a WebSocket close (1000) without MCCP hangup ends the call with BYE."""
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo") as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.close()
            assert await sipp_exit(uas) == 0, uas.errors()
            assert "BYE sip:" in uas.messages()
            await leaks.check()


async def test_page_gone_right_after_its_call(tmp_path: Path) -> None:
    """The socket drops right after the `call` (before any answer from the bridge): whatever
    point the call had reached, it is torn down (CANCEL if the INVITE was out) and nothing leaks."""
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_ring_cancel") as uas:
            leaks = Leaks.snapshot(bridge)
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.close_abruptly()
            await leaks.check()
            trace = uas.messages()
            if "INVITE sip:" in trace:  # the INVITE went out before the bridge saw the page go
                assert await sipp_exit(uas) == 0, uas.errors()
                assert "CANCEL sip:" in trace
