"""``wgchain nodes``: every node with its membership, address and host, and the filters. Pure.

A row joins what the registry says of a node (member, live or why not, token, owner,
key), its address from the ipam state and its host's status hash (online, or stale
after 3 reconcile intervals of silence: ``consumers.status.health``). The current
conflicts, anomalies and pending allocations come with it, as ``wgchain status``
lists them (``consumers/registry/issues.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from consumers.api.schemas import NodeSummary
from consumers.status.health import is_stale
from consumers.status.model import HostInfo, Issue
from shared import reasons


class NodeRow(NodeSummary, kw_only=True):
    """One node as ``wgchain nodes --json`` prints it (the fields of ``/v1/nodes``, and more)."""

    #: The endpoint its host announced (None: none).
    endpoint: str | None = None
    #: Unix time of its host's last report (None: never reported).
    reported_at: float | None = None
    #: Why its host fails closed ("" when it does not, or no host reported).
    fail_closed: str = ""


class NodesReport(msgspec.Struct, kw_only=True):
    """What ``wgchain nodes`` shows."""

    network: str
    generated_at: float
    #: Registry stage position the list reflects.
    position: str
    nodes: list[NodeRow]
    #: The current conflicts, anomalies and pending allocations (of the listed nodes when a
    #: filter is given).
    issues: list[Issue]
    #: Nodes before the filters.
    total: int


class Filter(msgspec.Struct, frozen=True, kw_only=True):
    """Which nodes to list (every condition given must hold)."""

    #: True: live members only; False: nodes that are not live (revoked included).
    live: bool | None = None
    #: Only nodes whose host is not online (stale, silent or absent).
    host_offline: bool = False
    #: Only the tokens of this owner (0x address, any case).
    owner: str | None = None
    #: Only nodes with this text (any case) in their id, address, key, owner or endpoint.
    search: str | None = None

    @property
    def given(self) -> bool:
        """Whether any condition is set."""
        return self != Filter()


def host_state(host: HostInfo | None, now: float, default_interval: float) -> str:
    """``online``, ``stale``, ``silent`` or ``absent`` (``shared/reasons.py``)."""
    if host is None:
        return reasons.ABSENT
    if host.updated_at is None:
        return reasons.SILENT
    return reasons.STALE if is_stale(host, now, default_interval) else reasons.ONLINE


def mark_hosts(
    summaries: Iterable[NodeSummary], hosts: Iterable[HostInfo], now: float, default_interval: float
) -> None:
    """Fill ``host_state`` of each of ``summaries`` from its host (by node id)."""
    by_node = {h.node: h for h in hosts}
    for summary in summaries:
        summary.host_state = host_state(by_node.get(summary.node), now, default_interval)


def rows(
    summaries: Iterable[NodeSummary],
    hosts: Iterable[HostInfo],
    now: float,
    default_interval: float,
) -> list[NodeRow]:
    """Each node of ``summaries`` with its host (by node id)."""
    by_node = {h.node: h for h in hosts}
    found = []
    for summary in summaries:
        host = by_node.get(summary.node)
        row = NodeRow(**msgspec.structs.asdict(summary))
        row.host_state = host_state(host, now, default_interval)
        if host is not None:
            row.endpoint = host.endpoint
            row.reported_at = host.updated_at
            row.fail_closed = host.fail_closed
        found.append(row)
    return found


def matches(row: NodeSummary, wanted: Filter) -> bool:
    """Whether ``row`` passes ``wanted`` (``row.host_state`` must be filled)."""
    if wanted.live is not None and row.live != wanted.live:
        return False
    if wanted.host_offline and row.host_state == reasons.ONLINE:
        return False
    if wanted.owner is not None and (row.owner or "") != wanted.owner.lower():
        return False
    if wanted.search:
        text = wanted.search.lower()
        fields = (row.node, row.ipv4, row.ipv6, row.public_key, row.owner, row.reason)
        extra = (getattr(row, "endpoint", None),)
        if not any(text in (f or "").lower() for f in (*fields, *extra)):
            return False
    return True


def select(
    found: Sequence[NodeRow], issues: Sequence[Issue], wanted: Filter
) -> tuple[list[NodeRow], list[Issue]]:
    """The rows that pass ``wanted``, and the issues of those nodes (all when no filter)."""
    shown = [r for r in found if matches(r, wanted)]
    if not wanted.given:
        return shown, list(issues)
    names = {r.node for r in shown}
    text = (wanted.search or "").lower()
    kept = [i for i in issues if i.node in names or (text and text in i.node.lower())]
    return shown, kept


__all__ = [
    "Filter",
    "NodeRow",
    "NodesReport",
    "host_state",
    "mark_hosts",
    "matches",
    "rows",
    "select",
]
