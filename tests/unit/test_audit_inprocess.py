"""The audit replay's in-process fold folds like the live stage: dead letters skipped,
retractions at the end of the effective input undone, anything else handed back."""

from __future__ import annotations

import base64
from collections.abc import Sequence

from consumers.audit.entries import Undecodable
from consumers.audit.inprocess import run_fold
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import FOLD, dump, fold
from shared.events import (
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeJoined,
    PeerUpsert,
    PublicKeyUpdated,
    Retracted,
)

POOL = "10.9.0.0/24"
A = "0x" + "a" * 40
B = "0x" + "b" * 40


def key(i: int) -> str:
    return base64.b64encode(bytes([i]) * 32).decode()


def grant(t: int, node: str, owner: str, k: str) -> NodeAccessGranted:
    return NodeAccessGranted(t, node, owner, k)


def revoke(t: int, node: str) -> NodeAccessRevoked:
    return NodeAccessRevoked(t, node)


def rekey(owner: str, k: str) -> PublicKeyUpdated:
    return PublicKeyUpdated(owner, k)


def log(events: Sequence[ChainEvent], first: int = 1) -> list[tuple[str, LogEntry]]:
    return [
        (f"{n}-0", LogEntry(1, "0xc0", n, f"0x{n:x}", "0x1", 0, 1_700_000_000 + n, event))
        for n, event in enumerate(events, start=first)
    ]


def test_a_clean_log_folds_to_the_pure_fold() -> None:
    entries = log([grant(1, "node-a", A, key(1)), grant(2, "node-b", B, key(2)), rekey(A, key(3))])
    folded = run_fold(FOLD, entries)
    assert folded is not None
    state, outputs = folded
    expected_state, expected_outputs = fold(entries)
    assert dump(state) == dump(expected_state)
    assert [o for _, o in outputs] == expected_outputs
    assert [i for i, _ in outputs] == [f"{n}-0" for n in range(1, len(outputs) + 1)]


def test_undecodable_entries_and_foreign_types_are_skipped() -> None:
    entries = log([grant(1, "node-a", A, key(1))])
    noise = [("0-1", Undecodable("bad")), ("0-2", NodeJoined("x", 1, A, key(1), "1-0", 1))]
    folded = run_fold(FOLD, noise + entries)
    assert folded is not None
    assert dump(folded[0]) == dump(fold(entries)[0])


def test_a_retraction_of_the_tail_undoes_it_and_its_outputs() -> None:
    entries = log([grant(1, "node-a", A, key(1)), revoke(1, "node-a")])
    retract = ("3-0", Retracted("2-0", 2, "0xold"))
    folded = run_fold(FOLD, [*entries, retract, *log([rekey(A, key(2))], first=4)])
    assert folded is not None
    expected = fold([entries[0], *log([rekey(A, key(2))], first=4)])
    assert dump(folded[0]) == dump(expected[0])
    assert [o for _, o in folded[1]] == expected[1]


def test_a_retraction_inside_the_log_is_handed_back() -> None:
    entries = log([grant(1, "node-a", A, key(1)), grant(2, "node-b", B, key(2))])
    assert run_fold(FOLD, [*entries, ("3-0", Retracted("1-0", 1, "0xold"))]) is None


def test_an_entry_that_fails_to_apply_is_dead_lettered_and_leaves_no_trace() -> None:
    ipam = IpamFold(POOL)
    good = NodeJoined("node-a", 1, A, key(1), "1-0", 1)
    hostile = NodeJoined("node-b", 2, B, "AllowedIPs = 0.0.0.0/0", "2-0", 1)
    folded = run_fold(ipam, [("1-0", good), ("2-0", hostile)])
    assert folded is not None
    state, outputs = folded
    assert [type(o) for _, o in outputs] == [PeerUpsert]
    assert set(state.nodes) == {"node-a"}
    assert ipam.dump(state) == ipam.dump(run_fold(ipam, [("1-0", good)])[0])  # type: ignore[index]
