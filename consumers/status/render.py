"""The fleet status as rich tables. Pure (builds renderables, prints nothing).

Every string that came from Redis or the chain is shown through
``validate.excerpt`` inside a ``Text`` (never parsed as rich markup).
"""

from __future__ import annotations

import re
import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from consumers.status.model import CRITICAL, OK, FleetStatus, HostInfo, Issue
from shared.durations import duration
from shared.validate import excerpt, is_valid_node_id, printable

#: Issues listed under the counts (the rest are counted).
ISSUES_SHOWN = 20
_STYLE = {CRITICAL: "bold red", "warning": "yellow"}
#: A transaction hash: shown whole (anything else is a hostile string, shown as an excerpt).
_TX_HASH = re.compile(r"0x[0-9a-fA-F]{64}")


def _t(value: object) -> Text:
    """A table cell that shows ``value`` literally, escaped and shortened."""
    return Text("—" if value is None or value == "" else excerpt(str(value)))


def node_text(node: str) -> str:
    """A node id as shown: whole when it is a valid one (up to 64 characters), else an excerpt."""
    return node if is_valid_node_id(node) else excerpt(node)


def fail_closed_text(reason: str) -> str:
    """Why a host fails closed, as every view shows it (``fail closed: not-live``)."""
    return f"fail closed: {excerpt(reason)}"


def age(then: float | None, now: float) -> str:
    """``then`` as "12s ago", "3m ago", "2h ago" ("never" for None)."""
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _lag(entries: int, capped: bool) -> str:
    return f"≥{entries}" if capped else str(entries)


def render(status: FleetStatus, now: float | None = None) -> Group:
    """Health and problems, summary, stages, hosts, counts and current issues of ``status``."""
    now = time.time() if now is None else now
    lst = status.listener
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("health", Text(status.health.upper(), style=_STYLE.get(status.health, "green")))
    for problem in status.problems:
        summary.add_row("", Text(excerpt(problem.message), style=_STYLE.get(problem.severity, "")))
    summary.add_row("network", Text(printable(status.network)))  # never cut
    summary.add_row("chain head", _t("unknown" if lst.chain_head is None else lst.chain_head))
    cursor = "none" if lst.cursor_block is None else str(lst.cursor_block)
    lag = "" if lst.lag_blocks is None else f" ({lst.lag_blocks} blocks behind)"
    summary.add_row("listener cursor", _t(cursor + lag))
    if lst.lease_holder is None:
        lease = "none"
    else:
        details = []
        if lst.lease_fence is not None:
            details.append(f"fence {lst.lease_fence}")
        if lst.lease_ttl_seconds is not None:
            details.append(f"{lst.lease_ttl_seconds:.1f}s left")
        lease = lst.lease_holder + (f" ({', '.join(details)})" if details else "")
    summary.add_row("lease holder", _t(lease))
    if lst.final_block is not None:
        seen = f"final block {lst.final_block}, head {lst.head_block} ({age(lst.polled_at, now)})"
        summary.add_row("listener saw", _t(seen))
    summary.add_row("events", _t(lst.events))

    stages = Table(title="stages", title_justify="left")
    for column in ("stage", "position", "lag", "dead letters"):
        stages.add_column(column)
    blocks = None if lst.lag_blocks is None else f"{lst.lag_blocks} blocks"
    stages.add_row("listener", _t(lst.last_entry), _t(blocks), _t(lst.dead_letters))
    for stage in status.stages:
        stages.add_row(
            stage.name,
            _t(stage.position),
            _lag(stage.lag_entries, stage.lag_capped),
            str(stage.dead_letters),
        )

    hosts = Table(title=f"hosts ({len(status.hosts)})", title_justify="left")
    columns = ("node", "address", "interface", "endpoint", "applied", "lag", "last apply")
    for column in (*columns, "report", "handshake", "peers", "last error"):
        hosts.add_column(column)
    for host in status.hosts:
        hosts.add_row(*_host_row(host, now))

    c = status.counts
    counts = Text(
        f"conflicts {c.conflicts}   anomalies {c.anomalies}   "
        f"pending allocations {c.pending_allocations}   dead letters {c.dead_letters}"
    )
    issues = [issue_line(i) for i in status.issues[:ISSUES_SHOWN]]
    if len(status.issues) > ISSUES_SHOWN:
        issues.append(Text(f"… and {len(status.issues) - ISSUES_SHOWN} more (--json lists all)"))
    expiring = _expiring(status, now)
    return Group(summary, stages, hosts, counts, *issues, *expiring)


def _expiring(status: FleetStatus, now: float) -> list[Text]:
    """The passes about to expire, one line each (the first :data:`ISSUES_SHOWN`)."""
    if not status.expiring:
        return []
    lines = [Text(f"passes expiring soon ({len(status.expiring)}):")]
    for item in status.expiring[:ISSUES_SHOWN]:
        left = duration(item.expires - now) if item.expires > now else "now"
        lines.append(Text(f"  {printable(item.node)}  token {item.token_id}  expires in {left}"))
    if len(status.expiring) > ISSUES_SHOWN:
        lines.append(Text(f"… and {len(status.expiring) - ISSUES_SHOWN} more (--json lists all)"))
    return lines


def issue_line(issue: Issue) -> Text:
    """One current issue: kind, reason, node, tokens, cause (chain strings escaped)."""
    parts = [f"  {issue.kind} {issue.reason}: node {node_text(issue.node)}"]
    if issue.token_id is not None:
        parts.append(f"token {issue.token_id}")
    if issue.winner_token_id is not None:
        parts.append(f"kept by token {issue.winner_token_id}")
    if issue.detail:
        parts.append(excerpt(issue.detail))
    if issue.cause:
        log = "" if issue.log_index is None else f", log {issue.log_index}"
        tx = issue.cause if _TX_HASH.fullmatch(issue.cause) else excerpt(issue.cause)
        parts.append(f"since block {issue.block} (tx {tx}{log})")
    elif issue.block:
        parts.append(f"since block {issue.block}")
    return Text(", ".join(parts))


def _host_row(host: HostInfo, now: float) -> list[Text | str]:
    where = [Text(node_text(host.node)), _t(host.addresses), _t(host.interface), _t(host.endpoint)]
    if host.updated_at is None:
        return [*where, "—", "—", "never reported", "—", "—", "—", "—"]
    lag = _lag(host.lag_entries, host.lag_capped)
    if host.lag_entries:
        lag += f" ({host.lag_seconds:.1f}s)"
    error = host.last_error or (host.fail_closed and fail_closed_text(host.fail_closed))
    report = age(host.updated_at, now)
    if host.handshake_latest is None:
        handshake = "—"
    else:
        handshake = age(host.handshake_latest, now) if host.handshake_latest else "none"
    return [
        *where,
        _t(host.applied_position),
        lag,
        age(host.last_apply, now),
        Text(f"{report} STALE", style="bold red") if host.stale else report,
        handshake,
        str(host.peer_count),
        Text(excerpt(error), style="red") if error else _t(""),
    ]


def check_lines(status: FleetStatus) -> list[str]:
    """``status --check``: a monitoring-plugin summary line, then one line per problem."""
    word = status.health.upper()
    if status.health == OK:
        lst = status.listener
        cursor = "nothing yet" if lst.cursor_block is None else f"block {lst.cursor_block}"
        return [
            f"wgchain {word}: {printable(status.network)}: listener at {cursor}, "
            f"{len(status.stages)} stages caught up, {len(status.hosts)} hosts"
        ]
    counts = {s: sum(p.severity == s for p in status.problems) for s in (CRITICAL, "warning")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"wgchain {word}: {printable(status.network)}: {summary}"]
    lines += [f"{p.severity.upper()} {p.code}: {p.message}" for p in status.problems]
    return lines
