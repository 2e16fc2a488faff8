"""``wgchain nodes`` and ``wgchain diagnose`` as rich renderables. Pure (prints nothing).

Values are never cut with an ellipsis: a narrow terminal folds them, piped output keeps
them whole (``consumers/status/output.py``). Strings from the chain or from a host are
shown through ``validate.excerpt`` inside a ``Text`` (never parsed as rich markup).
"""

from __future__ import annotations

import time
from typing import Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from consumers.nodes.findings import OK, PROBLEM, WARNING, Diagnosis
from consumers.nodes.listing import NodeRow, NodesReport
from consumers.status.render import age, fail_closed_text, issue_line, node_text
from shared import reasons
from shared.validate import is_valid_wg_key, printable

_MARKS: Final = {
    OK: ("ok", "green"),
    "info": ("··", ""),
    WARNING: ("!!", "yellow"),
    PROBLEM: ("✗✗", "bold red"),
}
_HOST_STYLE: Final = {reasons.ONLINE: "green", reasons.STALE: "bold red"}


def render_nodes(report: NodesReport, now: float | None = None) -> Group:
    """The nodes table, a count line and the current issues."""
    now = time.time() if now is None else now
    table = Table(title=f"nodes of {printable(report.network)}", title_justify="left")
    expires = any(r.expires is not None for r in report.nodes)
    columns = ["node", "live", "address", "key", "owner", "token", "host"]
    for column in [*columns, "expires"] if expires else columns:
        table.add_column(column, overflow="fold")
    for row in report.nodes:
        cells = _row(row, now)
        if expires:
            cells.append(_expires(row.expires, now))
        table.add_row(*cells)
    live = sum(r.live for r in report.nodes)
    shown = len(report.nodes)
    count = f"{shown} node{'s' * (shown != 1)} shown ({live} live)"
    if shown != report.total:
        count += f" of {report.total}"
    parts: list[RenderableType] = [table, Text(count)]
    if report.issues:
        parts.append(Text(f"current issues ({len(report.issues)}):"))
        parts += [issue_line(i) for i in report.issues]
    else:
        parts.append(Text("no current conflicts, anomalies or pending allocations"))
    return Group(*parts)


def _row(row: NodeRow, now: float) -> list[Text | str]:
    live = Text("live", style="green") if row.live else Text(f"no: {row.reason or 'not live'}")
    address = ", ".join(a for a in (row.ipv4, row.ipv6) if a) or "—"
    key = row.public_key if row.public_key and is_valid_wg_key(row.public_key) else "—"
    return [
        Text(node_text(row.node)),
        live,
        address,
        key,
        row.owner or "—",
        "—" if row.token_id is None else str(row.token_id),
        _host(row, now),
    ]


def _host(row: NodeRow, now: float) -> Text:
    state = row.host_state or reasons.ABSENT
    text = state
    if row.reported_at is not None:
        text += f" ({age(row.reported_at, now)})"
    if row.fail_closed:
        text += f", {fail_closed_text(row.fail_closed)}"
    return Text(text, style=_HOST_STYLE.get(state, "yellow"))


def _expires(expires: int | None, now: float) -> str:
    if expires is None:
        return "never"
    if 0 < expires < 253402300800:  # before year 10000 (a hostile value is shown as a number)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
    else:
        stamp = "cancelled" if expires <= 0 else f"unix time {expires}"
    return f"{stamp} (expired)" if expires <= now else stamp


def render_diagnosis(diagnosis: Diagnosis) -> Group:
    """One screen: each finding by area, the hosts that should carry the node, the verdict."""
    facts = diagnosis.facts
    head = Text(f"diagnose {node_text(diagnosis.node)} on {printable(facts.network)}", style="bold")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_column(overflow="fold")
    area = ""
    for finding in diagnosis.findings:
        mark, style = _MARKS.get(finding.severity, ("info", ""))
        shown = finding.area if finding.area != area else ""
        area = finding.area
        grid.add_row(shown, Text(mark, style=style), Text(printable(finding.message)))
    parts: list[RenderableType] = [head, grid]
    if diagnosis.carriers:
        hosts = Table(title="hosts that should carry it", title_justify="left")
        for column in ("host", "state", "peers with it", "has applied its entry", "why"):
            hosts.add_column(column, overflow="fold")
        for carrier in diagnosis.carriers:
            hosts.add_row(
                Text(node_text(carrier.node)),
                carrier.host_state,
                "yes" if carrier.expected else "no (hub topology)",
                carrier.carries,
                Text(printable(carrier.why)),
            )
        parts.append(hosts)
    verdict = diagnosis.verdict
    style = "bold green" if verdict.code == "ok" else "bold red"
    parts.append(Text(f"verdict: {verdict.code} — {printable(verdict.message)}", style=style))
    if verdict.next:
        parts.append(Text(f"next: {printable(verdict.next)}"))
    return Group(*parts)


__all__ = ["render_diagnosis", "render_nodes"]
