"""The fleet's gauges for Prometheus, read at scrape time from one status snapshot.

Served by the API's ``/metrics`` (one process reads Redis for the whole fleet, so
alerting rules see every series once). Per host (label ``node``): applied lag in
entries and seconds, seconds since the last apply and since the last report, stale
and fail-closed flags, the age of the newest WireGuard handshake; per network: live
members, fail-closed hosts, current issues by kind, whether Redis has data for the
network and whether a listener holds the lease, and ``wgchain_health_problems`` by
code and severity (every code always present, 0 when all is well), which is what
``compose/prometheus/alerts.yml`` fires on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.status.health import PROBLEM_CODES, Limits
from consumers.status.model import ANOMALY, CONFLICT, PENDING, HostInfo
from consumers.status.snapshot import Snapshot
from shared.logs import log
from shared.metrics import label


class FleetCollector(Collector):
    """A custom collector: one :meth:`Snapshot.fleet` per scrape."""

    def __init__(
        self,
        snapshot: Snapshot,
        limits: Limits,
        lazy_live: Callable[[], int] | None = None,
        lazy_expiring: Callable[[], int] | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.limits = limits
        self.live = lazy_live
        self.expiring = lazy_expiring
        self.net = label(snapshot.keys.tag)

    def collect(self) -> Iterator[Metric]:
        net = self.net
        up = GaugeMetricFamily(
            "wgchain_fleet_up",
            "1 when the API could read the fleet's status from Redis.",
            None,
            ["network"],
        )
        try:
            fleet = self.snapshot.fleet([], limits=self.limits)
            live = self.live() if self.live is not None else None
            soon = self.expiring() if self.expiring is not None else None
        except redis.RedisError as exc:
            log.bind(stage="api").debug("fleet metrics: {}", exc)
            up.add_metric([net], 0)
            yield up
            return
        up.add_metric([net], 1)
        yield up
        now = time.time()

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["network", *labels])

        data = gauge("wgchain_network_has_data", "1 when Redis holds data for this network.", [])
        data.add_metric([net], 1 if fleet.has_data else 0)
        lease = gauge("wgchain_listener_lease_held", "1 while some listener holds the lease.", [])
        lease.add_metric([net], 0 if fleet.listener.lease_holder is None else 1)
        problems = gauge(
            "wgchain_health_problems",
            "Current problems by code and severity (those of `wgchain status`).",
            ["code", "severity"],
        )
        for code, severity in PROBLEM_CODES.items():
            count = sum(p.code == code for p in fleet.problems)
            problems.add_metric([net, code, severity], count)
        issues = gauge("wgchain_current_issues", "Current issues by kind.", ["kind"])
        for kind in (CONFLICT, ANOMALY, PENDING):
            issues.add_metric([net, kind], sum(i.kind == kind for i in fleet.issues))
        yield from (data, lease, problems, issues)
        if live is not None:
            members = gauge("wgchain_live_members", "Members with a WireGuard peer now.", [])
            members.add_metric([net], live)
            yield members
        if soon is not None:
            expiring = gauge(
                "wgchain_passes_expiring",
                "Live members whose pass expires within WGCHAIN_EXPIRY_WARNING.",
                [],
            )
            expiring.add_metric([net], soon)
            yield expiring
        yield from self._hosts(fleet.hosts, now)

    def _hosts(self, hosts: list[HostInfo], now: float) -> Iterator[Metric]:
        net = self.net

        def per_host(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["network", "node"])

        lag = per_host("wgchain_host_lag_entries", "Peers entries a host has not applied.")
        lag_s = per_host(
            "wgchain_host_lag_seconds", "Time between the newest peers entry and the applied one."
        )
        applied = per_host("wgchain_host_apply_age_seconds", "Seconds since a host's last apply.")
        report = per_host("wgchain_host_report_age_seconds", "Seconds since a host's last report.")
        stale = per_host(
            "wgchain_host_stale", "1 when a host has not reported for 3 reconcile intervals."
        )
        closed = per_host(
            "wgchain_host_fail_closed", "1 while a host fails closed (no peers: not a member)."
        )
        handshake = per_host(
            "wgchain_host_handshake_age_seconds",
            "Seconds since the newest WireGuard handshake on a host's interface.",
        )
        fail_closed = 0
        for host in hosts:
            labels = [net, host.node]
            lag.add_metric(labels, host.lag_entries)
            lag_s.add_metric(labels, host.lag_seconds)
            if host.last_apply is not None:
                applied.add_metric(labels, max(0.0, now - host.last_apply))
            if host.updated_at is not None:
                report.add_metric(labels, max(0.0, now - host.updated_at))
            stale.add_metric(labels, 1 if host.stale else 0)
            closed.add_metric(labels, 1 if host.fail_closed else 0)
            fail_closed += 1 if host.fail_closed else 0
            if host.handshake_latest:
                handshake.add_metric(labels, max(0.0, now - host.handshake_latest))
        total = GaugeMetricFamily(
            "wgchain_fail_closed_hosts", "Hosts failing closed now.", labels=["network"]
        )
        total.add_metric([net], fail_closed)
        yield from (lag, lag_s, applied, report, stale, closed, handshake, total)


__all__ = ["FleetCollector"]
