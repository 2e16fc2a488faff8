"""``wgchain nodes``: rows, host states and filters (pure), and the renderer."""

from __future__ import annotations

from factories import KEY_A
from rich.console import Console

from consumers.api.schemas import NodeSummary
from consumers.nodes.listing import Filter, NodesReport, host_state, rows, select
from consumers.nodes.render import render_nodes
from consumers.status.model import HostInfo, Issue
from shared import reasons

NOW = 1_700_000_000.0
A, B = "0x" + "ab" * 20, "0x" + "cd" * 20
LONG = "n" * 64  # the longest node id: shown whole


def summaries() -> list[NodeSummary]:
    return [
        NodeSummary(node="node-a", member=True, live=True, reason="", token_id=1, owner=A,
                    public_key=KEY_A, ipv4="10.88.0.2"),
        NodeSummary(node="node-b", member=True, live=False, reason="no-key", token_id=2, owner=B),
        NodeSummary(node="node-c", member=False, live=False, reason="revoked"),
        NodeSummary(node=LONG, member=True, live=True, reason="", token_id=4, owner=B,
                    ipv4="10.88.0.4"),
    ]  # fmt: skip


def hosts() -> list[HostInfo]:
    return [
        HostInfo(node="node-a", updated_at=NOW - 5, reconcile_interval=30.0, endpoint="a:1"),
        HostInfo(node="node-b", updated_at=NOW - 500, reconcile_interval=30.0,
                 fail_closed=reasons.NOT_LIVE),
        HostInfo(node="node-c", endpoint="c:1"),  # announced, never reported
    ]  # fmt: skip


def test_host_states() -> None:
    assert host_state(None, NOW, 30) == reasons.ABSENT
    assert host_state(HostInfo(node="x"), NOW, 30) == reasons.SILENT
    assert host_state(HostInfo(node="x", updated_at=NOW - 89), NOW, 30) == reasons.ONLINE
    assert host_state(HostInfo(node="x", updated_at=NOW - 91), NOW, 30) == reasons.STALE
    slow = HostInfo(node="x", updated_at=NOW - 91, reconcile_interval=60)
    assert host_state(slow, NOW, 30) == reasons.ONLINE  # its own interval counts


def test_rows_join_hosts() -> None:
    found = {r.node: r for r in rows(summaries(), hosts(), NOW, 30.0)}
    assert {n: r.host_state for n, r in found.items()} == {
        "node-a": "online", "node-b": "stale", "node-c": "silent", LONG: "absent",
    }  # fmt: skip
    assert found["node-b"].fail_closed == reasons.NOT_LIVE
    assert found["node-a"].endpoint == "a:1"


def test_filters() -> None:
    found = rows(summaries(), hosts(), NOW, 30.0)

    def names(**wanted: object) -> list[str]:
        return [r.node for r in select(found, [], Filter(**wanted))[0]]  # type: ignore[arg-type]

    assert names() == ["node-a", "node-b", "node-c", LONG]
    assert names(live=True) == ["node-a", LONG]
    assert names(live=False) == ["node-b", "node-c"]
    assert names(host_offline=True) == ["node-b", "node-c", LONG]
    assert names(owner=B.upper().replace("0X", "0x")) == ["node-b", LONG]
    assert names(search="10.88.0.4") == [LONG]
    assert names(search="NO-KEY") == ["node-b"]
    assert names(search=KEY_A[:10]) == ["node-a"]
    assert names(live=True, host_offline=True) == [LONG]


def test_issues_follow_the_filter() -> None:
    found = rows(summaries(), hosts(), NOW, 30.0)
    issues = [
        Issue(kind="conflict", reason="duplicate-node", node="node-a", token_id=7),
        Issue(kind="anomaly", reason="invalid-node-id", node="bad node!", token_id=9),
    ]
    assert select(found, issues, Filter())[1] == issues
    assert select(found, issues, Filter(live=True))[1] == issues[:1]
    assert select(found, issues, Filter(search="bad"))[1] == issues[1:]


def test_the_table_cuts_nothing_and_shows_expiry_only_when_known() -> None:
    found = rows(summaries(), hosts(), NOW, 30.0)
    report = NodesReport(network="{1:0x" + "12" * 20 + "}", generated_at=NOW, position="1-0",
                         nodes=found, issues=[], total=4)  # fmt: skip
    console = Console(width=1000, record=True)
    console.print(render_nodes(report, now=NOW))
    text = console.export_text()
    assert LONG in text
    assert KEY_A in text
    assert A in text
    assert "{1:0x" + "12" * 20 + "}" in text
    assert "no: no-key" in text
    assert "stale (8m ago), fail closed: not-live" in text
    assert "expires" not in text
    assert "4 nodes shown (2 live)" in text
    found[0].expires = int(NOW) + 86400
    console = Console(width=1000, record=True)
    console.print(render_nodes(report, now=NOW))
    text = console.export_text()
    assert "expires" in text
    assert "2023-11-15 22:13 UTC" in text
    assert "never" in text
