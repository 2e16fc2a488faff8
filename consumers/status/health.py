"""What is wrong with the pipeline, from one fleet status: each situation named in one line. Pure.

:func:`assess` fills ``FleetStatus.problems`` (and marks stale hosts) from what the
status read; ``wgchain status`` shows them and ``--check`` exits with the worst
severity (the monitoring-plugin convention), ``/readyz`` answers 503 while there
is any, and the API's ``wgchain_problems`` gauge counts them for alerting rules.

| code | severity | when |
| --- | --- | --- |
| ``no-data`` | critical | Redis has nothing for this network (wrong contract or chain id?) |
| ``no-lease`` | critical | no listener holds the lease: nothing is appended |
| ``head-below-cursor`` | critical | the lease holder sees the chain's head below its cursor |
| ``listener-trouble`` | critical | the lease holder reports another problem (RPC unreachable) |
| ``listener-silent`` | critical | the lease holder has not looked at the chain for too long |
| ``listener-lag`` | critical | more than ``max_listener_lag`` final blocks not appended yet |
| ``stage-lag`` | critical | a stage is more than ``max_lag`` entries behind |
| ``stage-stalled`` | critical | a stage's oldest waiting entry waited over ``max_lag_seconds`` |
| ``host-stale`` | warning | a host silent for more than 3 reconcile intervals |
| ``host-behind`` | warning | a host with peers entries unapplied for over ``max_lag_seconds`` |
| ``pool-exhausted`` | warning | live members wait for an address |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import msgspec

from consumers.status.model import (
    CRITICAL,
    OK,
    PENDING,
    WARNING,
    FleetStatus,
    HostInfo,
    Problem,
)
from shared import settings
from shared.durations import duration
from shared.settings import Settings
from shared.validate import excerpt

#: Every problem code, with its severity (the table above).
PROBLEM_CODES: Final = {
    "no-data": CRITICAL,
    "no-lease": CRITICAL,
    "head-below-cursor": CRITICAL,
    "listener-trouble": CRITICAL,
    "listener-silent": CRITICAL,
    "listener-lag": CRITICAL,
    "stage-lag": CRITICAL,
    "stage-stalled": CRITICAL,
    "host-stale": WARNING,
    "host-behind": WARNING,
    "pool-exhausted": WARNING,
}
#: A host is stale after this many reconcile intervals without a report.
STALE_INTERVALS: Final = 3
_DEFAULT: Final = settings.DEFAULTS
_RANK: Final = {OK: 0, WARNING: 1, CRITICAL: 2}


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The thresholds: each field is the setting of its name (``WGCHAIN_MAX_LAG``, ...), with
    that setting's default."""

    #: Entries a stage may lag.
    max_lag: int = _DEFAULT.max_lag
    #: Final blocks the listener may have left to append.
    max_listener_lag: int = _DEFAULT.max_listener_lag
    #: Seconds an entry may wait for a stage or a host, and the listener between two looks.
    max_lag_seconds: float = _DEFAULT.max_lag_seconds
    #: Reconcile interval assumed for agents that do not report theirs (seconds).
    reconcile_interval: float = _DEFAULT.reconcile_interval
    #: Seconds before its expiration that a pass is listed as expiring.
    expiry_warning: float = _DEFAULT.expiry_warning
    #: Seconds past its expiration before a pass counts as expired.
    expiry_grace: float = _DEFAULT.expiry_grace

    @classmethod
    def of(cls, cfg: Settings) -> Limits:
        """The thresholds of the settings ``cfg`` (every field read from its setting)."""
        return cls(**{name: getattr(cfg, name) for name in cls.__struct_fields__})


def is_stale(host: HostInfo, now: float, default_interval: float) -> bool:
    """True when ``host`` reported, but not within the last 3 of its reconcile intervals."""
    if host.updated_at is None:
        return False
    interval = host.reconcile_interval or default_interval
    return now - host.updated_at > STALE_INTERVALS * interval


def assess(
    fleet: FleetStatus,
    limits: Limits,
    now: float,
    other_networks: Callable[[], list[str]] | None = None,
) -> list[Problem]:
    """Name every problem of ``fleet`` (stored in it, with its worst severity, and returned).

    ``other_networks`` lists the networks Redis holds data for; it is called only when
    this one has none, for the hint of that problem.
    """
    found: list[Problem] = []

    def add(code: str, severity: str, subject: str, message: str) -> None:
        assert PROBLEM_CODES[code] == severity, code
        found.append(Problem(code=code, severity=severity, subject=subject, message=message))

    for host in fleet.hosts:
        host.stale = is_stale(host, now, limits.reconcile_interval)
    if not fleet.has_data:
        others = [n for n in (other_networks() if other_networks else []) if n != _tag(fleet)]
        hint = f"; Redis has data for {', '.join(others)}" if others else ""
        add(
            "no-data",
            CRITICAL,
            "network",
            f"no data for network {fleet.network} in Redis: no listener cursor, lease or "
            f"events (wrong WGCHAIN_CONTRACT or WGCHAIN_CHAIN_ID?{hint})",
        )
        return _done(fleet, found)
    _listener(fleet, limits, now, add)
    for stage in fleet.stages:
        if stage.lag_entries > limits.max_lag:
            behind = f"≥{stage.lag_entries}" if stage.lag_capped else str(stage.lag_entries)
            add(
                "stage-lag",
                CRITICAL,
                stage.name,
                f"{stage.name} stage is {behind} entries behind (more than {limits.max_lag})",
            )
        elif stage.waiting_seconds > limits.max_lag_seconds:
            add(
                "stage-stalled",
                CRITICAL,
                stage.name,
                f"{stage.name} stage has not committed its {stage.lag_entries} waiting entries "
                f"for {duration(stage.waiting_seconds)} (is `wgchain {stage.name}` running?)",
            )
    for host in fleet.hosts:
        node = excerpt(host.node)
        if host.stale and host.updated_at is not None:
            interval = host.reconcile_interval or limits.reconcile_interval
            add(
                "host-stale",
                WARNING,
                host.node,
                f"host {node} has not reported for {duration(now - host.updated_at)} "
                f"(more than {STALE_INTERVALS} reconcile intervals of {interval:g}s)",
            )
        elif host.lag_entries and host.waiting_seconds > limits.max_lag_seconds:
            why = f"; last error: {excerpt(host.last_error)}" if host.last_error else ""
            add(
                "host-behind",
                WARNING,
                host.node,
                f"host {node} has not applied {host.lag_entries} peers entries for "
                f"{duration(host.waiting_seconds)}{why}",
            )
    pending = [i for i in fleet.issues if i.kind == PENDING]
    if pending:
        add(
            "pool-exhausted",
            WARNING,
            "ipam",
            f"{len(pending)} live member(s) wait for an address (the pool is exhausted), "
            f"first {excerpt(pending[0].node)}",
        )
    return _done(fleet, found)


def _listener(
    fleet: FleetStatus, limits: Limits, now: float, add: Callable[[str, str, str, str], None]
) -> None:
    lst = fleet.listener
    if lst.lease_holder is None:
        add(
            "no-lease",
            CRITICAL,
            "listener",
            "no listener holds the lease: nothing is appended (is `wgchain listen` running?)",
        )
        return
    holder = excerpt(lst.lease_holder)
    if lst.problem:
        code = "head-below-cursor" if "below" in lst.problem else "listener-trouble"
        add(code, CRITICAL, "listener", f"listener {holder}: {excerpt(lst.problem)}")
    elif lst.polled_at is not None and now - lst.polled_at > limits.max_lag_seconds:
        add(
            "listener-silent",
            CRITICAL,
            "listener",
            f"listener {holder} has not looked at the chain for {duration(now - lst.polled_at)}",
        )
    if lst.final_block is not None and lst.cursor_block is not None:
        behind = lst.final_block - lst.cursor_block
        if behind > limits.max_listener_lag:
            add(
                "listener-lag",
                CRITICAL,
                "listener",
                f"listener is {behind} blocks behind the final block {lst.final_block} "
                f"(more than {limits.max_listener_lag})",
            )


def _tag(fleet: FleetStatus) -> str:
    return fleet.network.strip("{}")


def _done(fleet: FleetStatus, found: list[Problem]) -> list[Problem]:
    fleet.problems = found
    fleet.health = max((p.severity for p in found), key=_RANK.__getitem__, default=OK)
    return found


__all__ = ["PROBLEM_CODES", "STALE_INTERVALS", "Limits", "assess", "is_stale"]
