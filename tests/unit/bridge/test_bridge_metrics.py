"""bridge.metrics: per-process registries, live + finished media counters, front-door counters."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import BridgeStats
from bridge.metrics import BridgeMetrics
from rtp.demux import DemuxCounters
from rtp.dtls import DtlsCounters, DtlsState
from rtp.ice_lite import IceCounters
from rtp.media import EdgeCounters, MediaStats
from rtp.relay import DropCause, LegCounters


def samples(metrics: BridgeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def media(to_sip: int, to_browser: int, *, srtp_auth: int = 0, not_validated: int = 0) -> MediaStats:
    up, down = LegCounters(packets=to_sip), LegCounters(packets=to_browser)
    up.dropped[DropCause.SRTP_AUTH] = srtp_auth
    return MediaStats(
        DemuxCounters(), IceCounters(), DtlsCounters(), up, down,
        EdgeCounters(not_validated=not_validated), DtlsState.CONNECTED, None,
    )  # fmt: skip


def test_registries_are_per_instance_and_front_door_is_read_live() -> None:
    stats = BridgeStats()
    calls = [0]
    a = BridgeMetrics(active_calls=lambda: calls[0], stats=lambda: stats)
    b = BridgeMetrics(active_calls=lambda: 7, stats=BridgeStats)  # a second one does not collide
    calls[0] = 2
    stats.refused_credentials = 3
    stats.connections = 5
    got = samples(a)
    assert got[("mccp_bridge_active_calls", frozenset())] == 2
    assert got[("mccp_bridge_auth_failures_total", frozenset({("reason", "credentials")}))] == 3
    assert got[("mccp_bridge_connections_total", frozenset())] == 5
    a.upstream_rejected()
    assert samples(a)[("mccp_bridge_auth_failures_total", frozenset({("reason", "upstream")}))] == 1
    assert samples(b)[("mccp_bridge_active_calls", frozenset())] == 7


def test_media_counters_live_then_finished() -> None:
    m = BridgeMetrics(active_calls=lambda: 0, stats=BridgeStats)
    live = [media(10, 20)]
    m.media_opened(1, lambda: live[0])
    m.media_opened(2, lambda: media(1, 1, srtp_auth=2, not_validated=4))
    to_sip = ("mccp_bridge_packets_relayed_total", frozenset({("direction", "to_sip")}))
    assert samples(m)[to_sip] == 11
    live[0] = media(30, 40)
    assert samples(m)[to_sip] == 31  # moves during the call
    m.call_ended(by="page", code=200, setup_seconds=0.25, media=media(35, 45), key=1)
    m.call_ended(
        by="media", code=408, setup_seconds=None, media=media(1, 1, srtp_auth=2, not_validated=4), key=2
    )
    got = samples(m)
    assert got[to_sip] == 36  # the final snapshots, each counted once
    assert got[("mccp_bridge_packets_relayed_total", frozenset({("direction", "to_browser")}))] == 46
    assert got[("mccp_bridge_srtp_failures_total", frozenset())] == 2
    dropped = "mccp_bridge_packets_dropped_total"
    assert got[(dropped, frozenset({("direction", "to_sip"), ("cause", "srtp_auth")}))] == 2
    assert got[(dropped, frozenset({("direction", "to_sip"), ("cause", "not_validated")}))] == 4
    assert got[("mccp_bridge_calls_ended_total", frozenset({("by", "page"), ("code", "200")}))] == 1
    assert got[("mccp_bridge_calls_ended_total", frozenset({("by", "media"), ("code", "408")}))] == 1
    assert got[("mccp_bridge_call_setup_seconds_count", frozenset())] == 1
    assert got[("mccp_bridge_call_setup_seconds_sum", frozenset())] == 0.25


async def test_scrape_route_answers_the_text_format() -> None:
    m = BridgeMetrics(active_calls=lambda: 0, stats=BridgeStats)
    status, content_type, body = await m.scrape()
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"# TYPE mccp_bridge_active_calls gauge" in body


def test_loss_and_jitter_per_direction() -> None:
    """Expected/lost counters from the relay's reception statistics (live, then final), and the
    per-call highest jitter in a histogram per direction at the call's end."""
    m = BridgeMetrics(active_calls=lambda: 0, stats=BridgeStats)
    stats = media(0, 0)
    up = stats.to_sip.reception
    for seq in [1, 2, 3, 6, 7]:  # 4 and 5 lost
        up.packet(0xAA, seq, 160 * seq, 1.0 + 0.02 * seq + (0.01 if seq == 6 else 0.0), 8000)
    stats.to_browser.reception.packet(0xBB, 10, 0, 1.0, 8000)
    stats.to_browser.reception.packet(0xBB, 10, 0, 1.02, 8000)  # a duplicate: lost -1, counted as 0
    m.media_opened(1, lambda: stats)
    got = samples(m)
    assert got[("mccp_bridge_packets_expected_total", frozenset({("direction", "to_sip")}))] == 7
    assert got[("mccp_bridge_packets_lost_total", frozenset({("direction", "to_sip")}))] == 2
    assert got[("mccp_bridge_packets_lost_total", frozenset({("direction", "to_browser")}))] == 0
    m.call_ended(by="page", code=200, setup_seconds=0.1, media=stats, key=1)
    got = samples(m)
    assert got[("mccp_bridge_packets_lost_total", frozenset({("direction", "to_sip")}))] == 2
    jitter = "mccp_bridge_call_jitter_seconds"
    up_labels = frozenset({("direction", "to_sip")})
    assert got[(f"{jitter}_count", up_labels)] == 1
    # seq 6 arrives 10 ms later than its timestamp says: |D| = 80 units, J = 5;
    # then seq 7 on time: |D| = 80, J = 5 + 75/16 (the highest), in seconds at 8 kHz
    assert got[(f"{jitter}_sum", up_labels)] == pytest.approx((5 + 75 / 16) / 8000)
    assert got[(f"{jitter}_bucket", up_labels | {("le", "0.001")})] == 0
    assert got[(f"{jitter}_bucket", up_labels | {("le", "0.0025")})] == 1


def test_busy_logins_cache_hits_sip_tcp_caps_and_dropped_log_records_are_exported() -> None:
    from bridge import logs
    from sip.transport import TransportStats

    stats, sip = BridgeStats(refused_busy=4, logins_cached=9), TransportStats()
    sip.tcp_refused, sip.tcp_refused_per_address, sip.tcp_head_timeouts = 1, 2, 3
    guard = logs.LogWriteGuard("test", None)
    guard.failed(OSError(28, "No space left on device"))
    logs._guards[:] = [guard]
    try:
        metrics = BridgeMetrics(active_calls=int, stats=lambda: stats, sip_stats=lambda: sip, worker=(1, 2))
        got = samples(metrics)
    finally:
        logs._guards.clear()
    assert got[("mccp_bridge_worker", frozenset({("index", "1"), ("count", "2")}))] == 1
    assert got[("mccp_bridge_auth_failures_total", frozenset({("reason", "busy")}))] == 4
    assert got[("mccp_bridge_logins_cached_total", frozenset())] == 9
    assert got[("mccp_bridge_log_records_dropped_total", frozenset())] == 1
    for reason, n in (("total_cap", 1), ("per_address", 2), ("head_timeout", 3)):
        assert got[("mccp_bridge_sip_tcp_refused_total", frozenset({("reason", reason)}))] == n


def test_shared_browser_port_counters_are_exported_in_single_port_mode_only() -> None:
    from rtp.browser_port import SharedPortCounters

    shared = SharedPortCounters(datagrams=10, stun_no_ufrag=1, unknown_ufrag=2, held=3, unknown_address=4)
    shared.twin_strays, shared.leg_errors, shared.routed_in_c = 5, 6, 7
    port: list[SharedPortCounters | None] = [None]  # the worker's port is opened after its metrics
    metrics = BridgeMetrics(active_calls=int, stats=BridgeStats, browser_port=lambda: port[0])
    assert not any(name.startswith("mccp_bridge_browser_port") for name, _ in samples(metrics))
    port[0] = shared
    got = samples(metrics)
    assert got[("mccp_bridge_browser_port_datagrams_total", frozenset())] == 17  # read in Python and C
    assert got[("mccp_bridge_browser_port_held_total", frozenset())] == 3
    causes = {"stun_no_ufrag": 1, "unknown_ufrag": 2, "unknown_address": 4, "twin_strays": 5, "leg_errors": 6}
    for cause, n in causes.items():
        assert got[("mccp_bridge_browser_port_dropped_total", frozenset({("cause", cause)}))] == n
    plain = BridgeMetrics(active_calls=int, stats=BridgeStats)  # per-call ports: no such family
    assert not any(name.startswith("mccp_bridge_browser_port") for name, _ in samples(plain))
