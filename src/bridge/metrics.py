"""Prometheus metrics of one bridge process, served at `/metrics` on the HTTPS port.

Every bridge (and every test's in-process bridge) has its own `CollectorRegistry`, never the
global one, so that two bridges in one process do not collide. What is exported:

=================================  =========  ====================================================
metric                             type       labels / meaning
=================================  =========  ====================================================
mccp_bridge_active_calls           gauge      calls being handled now
mccp_bridge_calls_ended_total      counter    `by` (page, sip, media, bridge), `code`
mccp_bridge_call_setup_seconds     histogram  from the page's `call` to the SIP answer
mccp_bridge_packets_relayed_total  counter    `direction` (to_sip, to_browser)
mccp_bridge_packets_dropped_total  counter    `direction`, `cause` (relay and edge causes)
mccp_bridge_packets_expected_total counter    `direction`: RTP packets the sender sent, from the
                                              sequence numbers (RFC 3550 A.3)
mccp_bridge_packets_lost_total     counter    `direction`: expected - received, per call at least 0
mccp_bridge_call_jitter_seconds    histogram  `direction`: per call at its end, the highest
                                              interarrival jitter (RFC 3550 A.8) it reached
mccp_bridge_srtp_failures_total    counter    SRTP/SRTCP packets that failed to decrypt
mccp_bridge_auth_failures_total    counter    `reason`: credentials, locked_out, file_origin, upstream
mccp_bridge_connections_total      counter    WSS connections accepted
mccp_bridge_front_open             gauge      `phase`: connections open (all), of which still in
                                              their TLS handshake or request head (handshake)
mccp_bridge_front_refused_total    counter    `reason`: per_address, untrusted_proxy (closed at
                                              accept), handshake_cap (the oldest handshake cut to
                                              admit a newcomer), origin (403), route (/metrics 403)
mccp_bridge_front_failures_total   counter    `cause`: handshake (TLS or head failed, timed out),
                                              bad_request, rate_limited (MCCP messages dropped),
                                              call_timeout (no `call` in time), pong_timeout
mccp_bridge_sip_messages_total     counter    `direction` (sent, received) by the SIP transport
mccp_bridge_sip_dropped_total      counter    `cause`: bad_datagram, bad_stream_message, send_error
mccp_bridge_media_plane_*_total    counter    the worker's media plane (rtp.plane): `passes` (each
                                              serves every ready socket), `handler_calls` (ready
                                              sockets served), `coalesced` (passes that ended with
                                              the coalescing sleep), `handler_errors`,
                                              `late_2ms`/`late_10ms`/`late_50ms` (busy passes
                                              resumed that late: the plane's latency tail)
=================================  =========  ====================================================

Everything that lives elsewhere is read at scrape time: the front door's counters (`BridgeStats`),
the SIP transport's, the active calls, and the media counters of every live call (`MediaStats`
snapshots) added to the totals of the finished ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from bridge.logs import dropped_records
from rtp.relay import DropCause

if TYPE_CHECKING:
    from bridge.app import BridgeStats
    from rtp.browser_port import SharedPortCounters
    from rtp.media import MediaStats
    from rtp.plane import PlaneCounters
    from sip.transport import TransportStats

SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
# Edge drops (rtp.media.EdgeCounters field -> the direction they concern).
_EDGE_DIRECTION = {
    "not_validated": "to_sip",
    "before_keys": "to_sip",
    "on_hold": "to_sip",
    "no_browser_address": "to_browser",
    "unknown_source": "to_browser",
    "no_sip_address": "to_sip",
    "send_failed": "any",
}


class _FrontDoor(Collector):
    """Reads the live values (active calls, the front door's counters) at scrape time."""

    def __init__(
        self,
        active_calls: Callable[[], int],
        stats: Callable[[], BridgeStats],
        sip_stats: Callable[[], TransportStats] | None,
        worker: tuple[int, int] = (0, 1),
        plane: Callable[[], PlaneCounters] | None = None,
        browser_port: Callable[[], SharedPortCounters | None] | None = None,
    ) -> None:
        self._active_calls = active_calls
        self._stats = stats
        self._sip_stats = sip_stats
        self._worker = worker
        self._plane = plane
        self._browser_port = browser_port
        self.upstream_rejected = 0  # callers whose credentials the upstream refused

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("mccp_bridge_active_calls", "Calls being handled now", self._active_calls())
        # Which worker process answered this scrape (workers share the port, SO_REUSEPORT).
        worker = GaugeMetricFamily(
            "mccp_bridge_worker", "The worker that answered (index of count)", labels=["index", "count"]
        )
        worker.add_metric([str(self._worker[0]), str(self._worker[1])], 1)
        yield worker
        stats = self._stats()
        auth = CounterMetricFamily(
            "mccp_bridge_auth_failures", "Calls refused at the front door", labels=["reason"]
        )
        auth.add_metric(["credentials"], stats.refused_credentials)
        auth.add_metric(["locked_out"], stats.refused_locked_out)
        auth.add_metric(["file_origin"], stats.refused_file_origin)
        auth.add_metric(["upstream"], self.upstream_rejected)
        auth.add_metric(["busy"], stats.refused_busy)
        yield auth
        yield CounterMetricFamily(
            "mccp_bridge_logins_cached", "Logins accepted from the credentials cache", stats.logins_cached
        )
        yield CounterMetricFamily(
            "mccp_bridge_log_records_dropped",
            "Log records lost because the log could not be written",
            dropped_records(),
        )
        yield CounterMetricFamily("mccp_bridge_connections", "WSS connections accepted", stats.connections)
        front = stats.server
        open_ = GaugeMetricFamily(
            "mccp_bridge_front_open", "Connections open on the HTTPS/WSS port", labels=["phase"]
        )
        open_.add_metric(["all"], front.connections_open)
        open_.add_metric(["handshake"], front.handshakes_open)
        yield open_
        refused = CounterMetricFamily(
            "mccp_bridge_front_refused",
            "Connections or requests refused by the front's caps and policies",
            labels=["reason"],
        )
        refused.add_metric(["per_address"], front.refused_per_address)
        refused.add_metric(["handshake_cap"], front.handshakes_evicted)
        refused.add_metric(["untrusted_proxy"], front.refused_untrusted_proxy)
        refused.add_metric(["origin"], front.refused_origin)
        refused.add_metric(["route"], front.refused_route)
        yield refused
        failures = CounterMetricFamily(
            "mccp_bridge_front_failures", "Clients the front cut or answered with an error", labels=["cause"]
        )
        failures.add_metric(["handshake"], front.handshake_failures)
        failures.add_metric(["bad_request"], front.bad_requests)
        failures.add_metric(["rate_limited"], front.rate_limited)
        failures.add_metric(["call_timeout"], front.call_timeouts)
        failures.add_metric(["pong_timeout"], front.pong_timeouts)
        yield failures
        if self._plane is not None:
            plane = self._plane()
            for name, value, what in (
                ("passes", plane.passes, "Passes of the media plane (each serves every ready socket)"),
                ("handler_calls", plane.handler_calls, "Ready media sockets served"),
                ("coalesced", plane.coalesced, "Media plane passes that ended with the coalescing sleep"),
                ("handler_errors", plane.handler_errors, "Media handlers that raised (a call ended)"),
                ("late_2ms", plane.late_2ms, "Busy media plane passes resumed over 2 ms late (rtp.plane)"),
                ("late_10ms", plane.late_10ms, "...over 10 ms late"),
                ("late_50ms", plane.late_50ms, "...over 50 ms late"),
            ):
                yield CounterMetricFamily(f"mccp_bridge_media_plane_{name}", what, value)
        shared = self._browser_port() if self._browser_port is not None else None
        if shared is not None:  # single-port mode (rtp.browser_port, docs/media-ports.md)
            yield CounterMetricFamily(
                "mccp_bridge_browser_port_datagrams",
                "Datagrams read on the worker's shared browser port (not the calls' connected twins)",
                shared.datagrams + shared.routed_in_c,
            )
            yield CounterMetricFamily(
                "mccp_bridge_browser_port_held",
                "ICE checks held for a call not serving its leg yet (handed over when it does)",
                shared.held,
            )
            dropped = CounterMetricFamily(
                "mccp_bridge_browser_port_dropped",
                "Datagrams on the shared browser port that reached no call",
                labels=["cause"],
            )
            for cause in ("stun_no_ufrag", "unknown_ufrag", "unknown_address", "twin_strays", "leg_errors"):
                dropped.add_metric([cause], getattr(shared, cause))
            yield dropped
        if self._sip_stats is not None:
            sip = self._sip_stats()
            messages = CounterMetricFamily(
                "mccp_bridge_sip_messages", "SIP messages through the transport", labels=["direction"]
            )
            messages.add_metric(["sent"], sip.sent)
            messages.add_metric(["received"], sip.received)
            yield messages
            bad = CounterMetricFamily(
                "mccp_bridge_sip_dropped", "SIP input dropped (unparsable) or sends failed", labels=["cause"]
            )
            bad.add_metric(["bad_datagram"], sip.bad_datagrams)
            bad.add_metric(["bad_stream_message"], sip.bad_stream_messages)
            bad.add_metric(["send_error"], sip.send_errors)
            yield bad
            tcp = CounterMetricFamily(
                "mccp_bridge_sip_tcp_refused",
                "SIP TCP/TLS connections refused or cut by the caps",
                labels=["reason"],
            )
            tcp.add_metric(["total_cap"], sip.tcp_refused)
            tcp.add_metric(["per_address"], sip.tcp_refused_per_address)
            tcp.add_metric(["head_timeout"], sip.tcp_head_timeouts)
            yield tcp


def _media_counts(media: MediaStats) -> Counter[tuple[str, ...]]:
    """One call's media counters as ("packets", direction), ("dropped", direction, cause) and
    ("srtp_failures",) keys."""
    out: Counter[tuple[str, ...]] = Counter()
    for direction, leg in (("to_sip", media.to_sip), ("to_browser", media.to_browser)):
        out["packets", direction] += leg.packets
        out["expected", direction] += leg.expected
        # Duplicates can make a call's count negative (RFC 3550 A.3); a counter never goes down.
        out["lost", direction] += max(0, leg.lost)
        for cause, n in leg.dropped.items():
            out["dropped", direction, cause.value] += n
    for item in fields(media.edge):
        if item.name in _EDGE_DIRECTION:
            out["dropped", _EDGE_DIRECTION[item.name], item.name] += getattr(media.edge, item.name)
    out["punted",] += media.edge.punted
    out["srtp_failures",] += (
        media.to_sip.dropped[DropCause.SRTP_AUTH] + media.to_sip.dropped[DropCause.SRTP_REPLAY]
    )
    return out


class _Media(Collector):
    """Media counters: the finished calls' totals plus a snapshot of every live call, so that
    the counters move during a call, not only at its end."""

    def __init__(self) -> None:
        self.finished: Counter[tuple[str, ...]] = Counter()
        self.live: dict[int, Callable[[], MediaStats]] = {}

    def collect(self) -> Iterator[Metric]:
        counts = Counter(self.finished)
        for snapshot in list(self.live.values()):
            counts.update(_media_counts(snapshot()))
        packets = CounterMetricFamily(
            "mccp_bridge_packets_relayed", "RTP packets relayed", labels=["direction"]
        )
        dropped = CounterMetricFamily(
            "mccp_bridge_packets_dropped",
            "Packets dropped, by direction and cause",
            labels=["direction", "cause"],
        )
        expected = CounterMetricFamily(
            "mccp_bridge_packets_expected",
            "RTP packets sent to the relay, from their sequence numbers (RFC 3550 A.3)",
            labels=["direction"],
        )
        lost = CounterMetricFamily(
            "mccp_bridge_packets_lost",
            "RTP packets lost before the relay (expected - received, RFC 3550 A.3)",
            labels=["direction"],
        )
        for key, n in sorted(counts.items()):
            match key:
                case ("packets", direction):
                    packets.add_metric([direction], n)
                case ("expected", direction):
                    expected.add_metric([direction], n)
                case ("lost", direction):
                    lost.add_metric([direction], n)
                case ("dropped", direction, cause) if n:
                    dropped.add_metric([direction, cause], n)
                case _:
                    pass
        yield packets
        yield dropped
        yield expected
        yield lost
        yield CounterMetricFamily(
            "mccp_bridge_srtp_failures", "SRTP/SRTCP packets that failed to decrypt", counts["srtp_failures",]
        )
        yield CounterMetricFamily(
            "mccp_bridge_media_punted",
            "Datagrams of the calls' steady streams that the C relay (rtp._steady) left to Python",
            counts["punted",],
        )


class BridgeMetrics:
    """The process's metrics: `media_opened` / `call_ended` per call, `scrape` serves `/metrics`."""

    def __init__(
        self,
        *,
        active_calls: Callable[[], int],
        stats: Callable[[], BridgeStats],
        sip_stats: Callable[[], TransportStats] | None = None,
        worker: tuple[int, int] = (0, 1),
        plane: Callable[[], PlaneCounters] | None = None,
        browser_port: Callable[[], SharedPortCounters | None] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._front = _FrontDoor(active_calls, stats, sip_stats, worker, plane, browser_port)
        self._media = _Media()
        self.registry.register(self._front)
        self.registry.register(self._media)
        self.calls_ended = PromCounter(
            "mccp_bridge_calls_ended",
            "Calls ended, by who ended them and the SIP-style code",
            ["by", "code"],
            registry=self.registry,
        )
        self.setup_seconds = Histogram(
            "mccp_bridge_call_setup_seconds",
            "Time from the page's call to the SIP answer",
            buckets=SETUP_BUCKETS,
            registry=self.registry,
        )
        self.jitter_seconds = Histogram(
            "mccp_bridge_call_jitter_seconds",
            "Per call, the highest interarrival jitter (RFC 3550 A.8) of the RTP it received",
            ["direction"],
            buckets=JITTER_BUCKETS,
            registry=self.registry,
        )

    def media_opened(self, key: int, snapshot: Callable[[], MediaStats]) -> None:
        """A call's media plane is up: its counters are read at each scrape until `call_ended`."""
        self._media.live[key] = snapshot

    def call_ended(
        self,
        *,
        by: str,
        code: int,
        setup_seconds: float | None,
        media: MediaStats | None,
        key: int | None = None,
    ) -> None:
        """Count one finished call; its final media counters join the totals (`key` as given to
        `media_opened`)."""
        self.calls_ended.labels(by=by, code=str(code)).inc()
        if setup_seconds is not None:
            self.setup_seconds.observe(setup_seconds)
        if key is not None:
            self._media.live.pop(key, None)
        if media is not None:
            self._media.finished.update(_media_counts(media))
            for direction, leg in (("to_sip", media.to_sip), ("to_browser", media.to_browser)):
                if leg.expected:  # no RTP that way: no jitter to speak of
                    self.jitter_seconds.labels(direction=direction).observe(leg.reception.max_jitter)

    def upstream_rejected(self) -> None:
        """Count a caller whose credentials the upstream refused (its digest challenge again)."""
        self._front.upstream_rejected += 1

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    async def scrape(self) -> tuple[int, str, bytes]:
        """The `/metrics` route for `mccp.server.serve_mccp`: (status, content type, body)."""
        # The classic text format (0.0.4), which every Prometheus version scrapes.
        return 200, CONTENT_TYPE_PLAIN_0_0_4, self.exposition()
