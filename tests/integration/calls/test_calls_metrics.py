"""Per-call observability: the one `call end` record with every field, the call's context on
every line it logs, and the Prometheus counters at /metrics moving with a real call (SIPp echo).
Run inside scripts/netns_run.sh.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.integration.calls.conftest import (
    PASSWORD,
    call_bridge,
    metric,
    page,
    scrape_metrics,
    sipp,
    sipp_exit,
)

import trio

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]


async def test_call_end_record_context_and_metrics(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo") as uas:
            before = await scrape_metrics(bridge)
            assert metric(before, "mccp_bridge_active_calls") == 0
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                during = await scrape_metrics(bridge)
                assert metric(during, "mccp_bridge_active_calls") == 1
                await p.wait_media(to_receive=50, to_send=50)
                live = await scrape_metrics(bridge)  # media counters move during the call
                assert metric(live, "mccp_bridge_packets_relayed_total", direction="to_sip") >= 45
                assert metric(live, "mccp_bridge_packets_relayed_total", direction="to_browser") >= 45
                # The worker's media plane served every datagram (a pass serves one or more sockets).
                passes = metric(live, "mccp_bridge_media_plane_passes_total")
                assert passes >= 1
                assert metric(live, "mccp_bridge_media_plane_handler_calls_total") >= max(passes, 90)
                assert metric(live, "mccp_bridge_media_plane_handler_errors_total") == 0
                await p.hangup()
                assert (await p.wait_hangup()).code == 200
            assert await sipp_exit(uas) == 0, uas.errors()
            with trio.fail_after(5):
                while bridge.active_calls:
                    await trio.sleep(0.02)
            after = await scrape_metrics(bridge)
    # the end-of-call record
    ends = [r for r in caplog.records if r.name == "bridge.call" and "call end:" in r.getMessage()]
    assert len(ends) == 1
    record = ends[0].call  # type: ignore[attr-defined]
    assert record["caller"] == "100"
    assert record["callee"] == "102"
    assert record["call_id"]
    assert record["call_id"] in uas.messages()
    assert 0 <= record["setup_ms"] < 2000
    assert record["duration_s"] >= 1.0
    assert (record["code"], record["ended_by"]) == (200, "page")
    assert record["to_sip_packets"] >= 50
    assert record["to_browser_packets"] >= 50
    assert record["srtp_failures"] == 0
    # every line the call logged carries its context
    lines = [r for r in caplog.records if r.name == "bridge.call"]
    assert len(lines) >= 3
    for line in lines:
        assert line.getMessage().startswith("[127.0.0.1:"), line.getMessage()
        assert line.call_ctx["caller"] == "100"  # type: ignore[attr-defined]
    assert all(
        record["call_id"] in line.getMessage() for line in lines if "SIP call" not in line.getMessage()
    )
    # the counters moved
    assert metric(after, "mccp_bridge_active_calls") == 0
    assert metric(after, "mccp_bridge_calls_ended_total", by="page", code="200") == 1
    assert metric(after, "mccp_bridge_call_setup_seconds_count") == 1
    assert metric(after, "mccp_bridge_call_setup_seconds_sum") == pytest.approx(
        record["setup_ms"] / 1000, abs=0.01
    )
    assert metric(after, "mccp_bridge_packets_relayed_total", direction="to_sip") == record["to_sip_packets"]
    assert (
        metric(after, "mccp_bridge_packets_relayed_total", direction="to_browser")
        == record["to_browser_packets"]
    )
    assert (
        metric(after, "mccp_bridge_connections_total") == metric(before, "mccp_bridge_connections_total") + 1
    )
    sent = "mccp_bridge_sip_messages_total"
    assert metric(after, sent, direction="sent") >= 3  # INVITE, ACK, BYE
    assert metric(after, sent, direction="received") >= 3  # 100, 180, 200, 200 (BYE)


async def test_loss_and_jitter_in_the_record_and_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The page stops sending for 0.2 s while its RTP sequence numbers run on (lost on the way,
    as the relay sees it); SIPp echoes the stream back, so both directions have the same gap. The
    page's own count of skipped sequence numbers is the reference; jitter on loopback is small."""
    caplog.set_level("INFO")
    with trio.fail_after(20):
        async with call_bridge(tmp_path) as bridge, sipp(tmp_path, "uas_echo") as uas:
            async with page(bridge) as p:
                await p.call("100", PASSWORD, "102")
                await p.wait_for("answer")
                await p.wait_media(to_receive=20, to_send=20)
                p.sending = False
                await trio.sleep(0.2)
                p.sending = True
                received = p.received.packets
                await p.wait_media(to_receive=received + 20)
                await p.hangup()
                assert (await p.wait_hangup()).code == 200
            assert await sipp_exit(uas) == 0, uas.errors()
            with trio.fail_after(5):
                while bridge.active_calls:
                    await trio.sleep(0.02)
            after = await scrape_metrics(bridge)
    gap = p.received.lost
    assert 5 <= gap <= 15, gap  # 0.2 s at 50 packets/s
    (end,) = [r for r in caplog.records if r.name == "bridge.call" and "call end:" in r.getMessage()]
    record = end.call  # type: ignore[attr-defined]
    assert record["to_sip_lost"] == gap
    assert record["to_browser_lost"] == gap
    for direction in ("to_sip", "to_browser"):
        assert metric(after, "mccp_bridge_packets_lost_total", direction=direction) == gap
        expected = metric(after, "mccp_bridge_packets_expected_total", direction=direction)
        assert expected >= record[f"{direction}_packets"] + gap
        assert 0 < record[f"{direction}_jitter_max_ms"] < 30
        assert 0 <= record[f"{direction}_jitter_ms"] <= record[f"{direction}_jitter_max_ms"]
        assert metric(after, "mccp_bridge_call_jitter_seconds_count", direction=direction) == 1
        assert metric(after, "mccp_bridge_call_jitter_seconds_sum", direction=direction) == pytest.approx(
            record[f"{direction}_jitter_max_ms"] / 1000, abs=1e-5
        )
