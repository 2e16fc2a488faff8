"""The status tables show Redis strings literally (no rich markup), escaped and shortened."""

from __future__ import annotations

from rich.console import Console

from consumers.status.model import Counts, FleetStatus, HostInfo, ListenerInfo, StageInfo
from consumers.status.render import age, render


def _text(status: FleetStatus, now: float) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(render(status, now))
    return console.export_text()


def test_hostile_strings_are_shown_literally_and_lags_say_when_capped() -> None:
    now = 1_800_000_000.0
    status = FleetStatus(
        network="{1:0xab}",
        generated_at=now,
        listener=ListenerInfo(cursor_block=10, chain_head=None, lease_holder="[bold]me"),
        stages=[StageInfo(name="registry", position="5-0", lag_entries=1000, lag_capped=True)],
        hosts=[
            HostInfo(
                node="node-a",
                applied_position="5-0",
                last_apply=now - 90,
                updated_at=now,
                last_error="[red]boom[/red]\nsecond line",
            ),
            HostInfo(node="node-b", endpoint="192.0.2.1:51820"),
        ],
        counts=Counts(conflicts=2, pending_allocations=1),
    )
    text = _text(status, now)
    assert "[red]boom[/red]\\nsecond line" in text  # markup not applied, newline escaped
    assert "[bold]me" in text
    assert "unknown" in text  # no chain head
    assert "≥1000" in text
    assert "1m ago" in text
    assert "never reported" in text
    assert "conflicts 2" in text
    assert "pending allocations 1" in text


def test_age() -> None:
    assert age(None, 100.0) == "never"
    assert age(95.0, 100.0) == "5s ago"
    assert age(100.0 - 7200, 100.0) == "2h ago"
    assert age(100.0 - 3 * 86400, 100.0) == "3d ago"


def test_ids_are_never_cut() -> None:
    """The network id, a 64-character node id, a transaction hash: whole; hostile text: an excerpt."""
    from consumers.status.model import Issue

    now = 1_800_000_000.0
    network = "{31337:0x" + "5f" * 20 + "}"
    node = "n" * 64
    tx = "0x" + "ab" * 32
    status = FleetStatus(
        network=network,
        generated_at=now,
        listener=ListenerInfo(),
        stages=[],
        hosts=[HostInfo(node=node, updated_at=now, interface="wg0", addresses="10.88.0.2/16")],
        counts=Counts(conflicts=1),
        issues=[
            Issue(kind="conflict", reason="duplicate-key", node=node, cause=tx, block=9),
            Issue(kind="anomaly", reason="invalid-key", node="x", cause="y" * 80, block=9),
        ],
    )
    text = _text(status, now)
    assert network in text
    assert node in text
    assert f"tx {tx}" in text
    assert "(+32 chars)" in text  # a cause that is no transaction hash is cut, as hostile text
    assert "wg0" in text
    assert "10.88.0.2/16" in text
