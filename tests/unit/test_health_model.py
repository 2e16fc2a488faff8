"""The pure parts of health: outage lines, loop verdicts, the problems a status names, and the
current issues the registry and ipam folds keep (with their causes)."""

from __future__ import annotations

import pytest
from factories import KEY_A, KEY_B

from consumers.ipam.allocate import PENDING_ISSUES_FIELD, IpamFold
from consumers.ipam.allocate import fold as ipam_fold
from consumers.registry import issues as registry_issues
from consumers.registry.fold import FOLD, fold
from consumers.status.health import Limits, assess
from consumers.status.model import (
    Counts,
    FleetStatus,
    HostInfo,
    Issue,
    ListenerInfo,
    StageInfo,
)
from consumers.status.render import check_lines
from shared import health
from shared.events import (
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeJoined,
    PublicKeyUpdated,
)
from shared.logs import log

NOW = 1_800_000_000.0


# --- outages ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines() -> list[str]:
    got: list[str] = []
    sink = log.add(lambda m: got.append(str(m)), level="WARNING", format="{message}")
    yield got
    log.remove(sink)


def test_an_outage_is_one_line_when_it_starts_one_a_minute_and_one_when_it_ends(
    lines: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(health.time, "monotonic", clock)
    outage = health.Outage("Redis")
    outage.ok()  # nothing to end
    for _ in range(150):  # one attempt a second for 150 s
        outage.failed(ConnectionError("Connection refused"))
        clock.now += 1
    assert outage.down() == "Redis unreachable for 2m30s: ConnectionError: Connection refused"
    outage.ok()
    outage.ok()
    assert [line.split(" (")[0] for line in lines] == [
        "Redis unreachable",
        "Redis still unreachable after 1m00s",
        "Redis still unreachable after 2m00s",
        "Redis reachable again after 2m30s",
    ]
    assert "150 failed attempts" in lines[-1]
    assert outage.down() is None


def test_a_quiet_outage_logs_nothing(lines: list[str]) -> None:
    outage = health.Outage("RPC", quiet=True)
    outage.failed("boom")
    assert outage.down()
    outage.ok()
    assert lines == []


def test_verdict_names_an_outage_then_a_stuck_or_troubled_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(health.time, "monotonic", clock)
    work = health.work("registry stage", bound=30)
    try:
        assert health.verdict(()).healthy
        clock.now += 31
        assert health.verdict(()).reason == "registry stage: no progress for 31s"
        work.beat()
        work.trouble("the chain's head is below the cursor")
        assert health.verdict(()).reason == "registry stage: the chain's head is below the cursor"
        work.trouble("")
        assert health.verdict(()).healthy
        outage = health.Outage("Redis", quiet=True)
        outage.failed("Connection refused")
        assert health.verdict((outage,)).reason.startswith("Redis unreachable for 0s")
    finally:
        health.retire(work)
    clock.now += 1000
    assert health.verdict(()).healthy  # a retired loop does not count


# --- what a status names ------------------------------------------------------------------


def fleet(**changes: object) -> FleetStatus:
    status = FleetStatus(
        network="{8453:0xab}",
        generated_at=NOW,
        listener=ListenerInfo(
            cursor_block=100, lease_holder="l1", final_block=100, polled_at=NOW - 1
        ),
        stages=[StageInfo(name="registry", position="1-0", lag_entries=0)],
        hosts=[HostInfo(node="node-a", updated_at=NOW - 5, reconcile_interval=30)],
        counts=Counts(),
    )
    for name, value in changes.items():
        setattr(status, name, value)
    return status


def codes(status: FleetStatus, limits: Limits | None = None) -> list[str]:
    return [p.code for p in assess(status, limits or Limits(), NOW, lambda: ["1:0xcd"])]


def test_a_healthy_fleet_has_no_problem() -> None:
    status = fleet()
    assert codes(status) == []
    assert status.health == "ok"
    assert check_lines(status)[0].startswith("wgchain OK: {8453:0xab}: listener at block 100")


def test_no_data_for_the_network_is_named_alone_with_a_hint() -> None:
    status = fleet(has_data=False, listener=ListenerInfo())
    problems = assess(status, Limits(), NOW, lambda: ["1:0xcd", "8453:0xab"])
    assert [p.code for p in problems] == ["no-data"]
    assert "wrong WGCHAIN_CONTRACT or WGCHAIN_CHAIN_ID" in problems[0].message
    assert "Redis has data for 1:0xcd" in problems[0].message
    assert "8453:0xab" not in problems[0].message.split("Redis has data for")[1]
    assert status.health == "critical"


def test_the_listener_problems() -> None:
    assert codes(fleet(listener=ListenerInfo(cursor_block=5))) == ["no-lease"]
    below = ListenerInfo(
        cursor_block=100, lease_holder="l1", problem="the chain's head 3 (final block 3) is below"
    )
    assert codes(fleet(listener=below)) == ["head-below-cursor"]
    rpc = ListenerInfo(cursor_block=100, lease_holder="l1", problem="RPC unreachable: x")
    assert codes(fleet(listener=rpc)) == ["listener-trouble"]
    silent = ListenerInfo(cursor_block=100, lease_holder="l1", final_block=100, polled_at=NOW - 61)
    assert codes(fleet(listener=silent)) == ["listener-silent"]
    lag = ListenerInfo(cursor_block=100, lease_holder="l1", final_block=151, polled_at=NOW)
    assert codes(fleet(listener=lag)) == ["listener-lag"]
    assert codes(fleet(listener=lag), Limits(max_listener_lag=51)) == []


def test_stages_behind_or_stalled() -> None:
    behind = [StageInfo(name="ipam", position="1-0", lag_entries=1001)]
    assert codes(fleet(stages=behind)) == ["stage-lag"]
    stalled = [StageInfo(name="ipam", position="1-0", lag_entries=2, waiting_seconds=61)]
    status = fleet(stages=stalled)
    assert codes(status) == ["stage-stalled"]
    assert "is `wgchain ipam` running?" in status.problems[0].message


def test_stale_hosts_use_their_own_interval_or_the_setting() -> None:
    own = HostInfo(node="node-a", updated_at=NOW - 91, reconcile_interval=30)
    status = fleet(hosts=[own])
    assert codes(status) == ["host-stale"]
    assert status.hosts[0].stale
    assert status.health == "warning"
    old_agent = HostInfo(node="node-b", updated_at=NOW - 50)  # no interval: the setting's
    assert codes(fleet(hosts=[old_agent]), Limits(reconcile_interval=10)) == ["host-stale"]
    assert codes(fleet(hosts=[old_agent])) == []  # within 3 x 30 s
    never = HostInfo(node="node-c")  # announced, never reported: not stale, just unknown
    assert codes(fleet(hosts=[never])) == []


def test_a_host_that_reports_but_does_not_apply() -> None:
    host = HostInfo(
        node="node-a", updated_at=NOW, lag_entries=3, waiting_seconds=120, last_error="wg: x"
    )
    status = fleet(hosts=[host])
    assert codes(status) == ["host-behind"]
    assert "last error: wg: x" in status.problems[0].message


def test_pending_allocations_are_a_warning_and_the_check_lines_list_everything() -> None:
    pending = [Issue(kind="pending", reason="pool-exhausted", node="node-z")]
    status = fleet(issues=pending, listener=ListenerInfo(cursor_block=1))
    assert codes(status) == ["no-lease", "pool-exhausted"]
    lines = check_lines(status)
    assert lines[0] == "wgchain CRITICAL: {8453:0xab}: 1 critical, 1 warning"
    assert lines[1].startswith("CRITICAL no-lease: no listener holds the lease")
    assert lines[2].startswith("WARNING pool-exhausted: 1 live member(s) wait")


# --- current issues kept by the folds ----------------------------------------------------


def entry(block: int, event: object) -> LogEntry:
    return LogEntry(
        chain_id=1,
        contract="0x" + "ab" * 20,
        block_number=block,
        block_hash="0x" + "00" * 32,
        tx_hash=f"0x{block:064x}",
        log_index=0,
        block_timestamp=0,
        event=event,  # type: ignore[arg-type]
    )


def owner(n: int) -> str:
    return f"0x{n:040x}"


def test_registry_issues_are_current_and_keep_their_cause() -> None:
    events = [
        ("1-0", entry(1, NodeAccessGranted(1, "node-a", owner(1), KEY_A))),
        ("2-0", entry(2, NodeAccessGranted(2, "node-a", owner(2), KEY_B))),  # duplicate node
        ("3-0", entry(3, NodeAccessGranted(3, "node-b", owner(3), KEY_A))),  # duplicate key
        ("4-0", entry(4, NodeAccessGranted(4, "bad/id", owner(4), KEY_B))),  # invalid node id
        ("5-0", entry(5, PublicKeyUpdated(owner(5), "not a key"))),
        ("6-0", entry(6, NodeAccessGranted(5, "node-e", owner(5), ""))),  # invalid key
    ]
    state, _ = fold(events)
    found = {
        (i.kind, i.reason, i.node, i.token_id, i.cause, i.block)
        for n in state.issues.values()
        for i in n
    }
    assert found == {  # each names its log as the chain does: block and transaction
        ("conflict", "duplicate-node", "node-a", 2, f"0x{2:064x}", 2),
        ("conflict", "duplicate-key", "node-b", 3, f"0x{3:064x}", 3),
        ("anomaly", "invalid-node-id", "bad/id", 4, f"0x{4:064x}", 4),
        ("anomaly", "invalid-key", "node-e", 5, f"0x{6:064x}", 6),
    }
    # the issues end with their cause: the second token revoked, a valid key set
    later = [
        ("7-0", entry(7, NodeAccessRevoked(2, "node-a"))),
        ("8-0", entry(8, PublicKeyUpdated(owner(5), KEY_B))),
    ]
    state, _ = fold(later, state)
    left = {(i.reason, i.node) for n in state.issues.values() for i in n}
    assert ("duplicate-node", "node-a") not in left
    assert ("invalid-key", "node-e") not in left
    assert ("duplicate-key", "node-b") in left


def test_registry_issues_are_persisted_and_reloaded_exactly() -> None:
    events = [
        ("1-0", entry(1, NodeAccessGranted(1, "node-a", owner(1), KEY_A))),
        ("2-0", entry(2, NodeAccessGranted(2, "node-b", owner(2), KEY_A))),
    ]
    state, _ = fold(events)
    stored: dict[str, bytes] = {}
    to_set, to_del = FOLD.take_changes(state)
    stored.update(to_set)
    assert registry_issues.ISSUES_FIELD in stored
    assert FOLD.dump(state) == stored
    reloaded = FOLD.load(stored)
    assert reloaded.issues == state.issues
    state, _ = fold([("3-0", entry(3, NodeAccessRevoked(1, "node-a")))], state)
    to_set, to_del = FOLD.take_changes(state)
    assert registry_issues.ISSUES_FIELD in to_del  # no issue left: the field goes
    # a state persisted before issues were kept: they are found again, cause unknown
    old = {k: v for k, v in FOLD.dump(fold(events)[0]).items() if not k.startswith("~")}
    migrated = FOLD.load(old)
    [issue] = [i for n in migrated.issues.values() for i in n]
    assert (issue.reason, issue.node, issue.cause) == ("duplicate-key", "node-b", "")
    assert registry_issues.ISSUES_FIELD in FOLD.take_changes(migrated)[0]


def test_pending_allocations_are_listed_with_their_block() -> None:
    ipam = IpamFold("10.9.0.0/30")  # two usable addresses
    joins = [
        (f"{n}-0", NodeJoined(f"node-{n}", n, owner(n), KEY_A, f"{n}0-0", n)) for n in (1, 2, 3)
    ]
    state, _ = ipam_fold(joins, ipam=ipam)
    to_set, _ = ipam.take_changes(state)
    [pending] = registry_issues.listed(to_set[PENDING_ISSUES_FIELD])
    assert (pending.kind, pending.node, pending.block) == ("pending", "node-3", 3)
    assert ipam.dump(state)[PENDING_ISSUES_FIELD] == to_set[PENDING_ISSUES_FIELD]
