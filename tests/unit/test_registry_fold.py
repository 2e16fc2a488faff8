"""The registry fold (docs/design.md §4): examples for each rule, then properties over random logs."""

from __future__ import annotations

from collections.abc import Sequence
from unittest import mock

import pytest
from factories import wg_key as key
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.registry.fold import FOLD, RegistryState, dump, fold
from consumers.registry.quick import QUICK
from shared.events import (
    Anomaly,
    ChainEvent,
    Conflict,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    NodeChanged,
    NodeJoined,
    NodeLeft,
    PublicKeyUpdated,
    RegistryChange,
    encode,
)
from shared.validate import is_valid_node_id, is_valid_wg_key

A = "0x" + "a" * 40
B = "0x" + "b" * 40
C = "0x" + "c" * 40


def grant(t: int, node: str, owner: str, k: str = "") -> NodeAccessGranted:
    return NodeAccessGranted(t, node, owner, k)


def revoke(t: int, node: str) -> NodeAccessRevoked:
    return NodeAccessRevoked(t, node)


def transfer(t: int, old: str, new: str) -> NodeAccessTransferred:
    return NodeAccessTransferred(t, old, new)


def rekey(owner: str, k: str) -> PublicKeyUpdated:
    return PublicKeyUpdated(owner, k)


def log(events: Sequence[ChainEvent], first: int = 1) -> list[tuple[str, LogEntry]]:
    """``events`` as events-stream entries: entry id ``<n>-0`` at block ``n``."""
    return [
        (
            f"{n}-0",
            LogEntry(1, "0xc0", n, f"0x{n:x}", "0x1", 0, 1_700_000_000 + n, event),
        )
        for n, event in enumerate(events, start=first)
    ]


def run(*events: ChainEvent) -> tuple[RegistryState, list[RegistryChange]]:
    return fold(log(events))


def last_step(*events: ChainEvent) -> list[RegistryChange]:
    """Outputs of the last event only."""
    state, _ = fold(log(events[:-1]))
    _, out = fold(log(events[-1:], first=len(events)), state)
    return out


def live_keys(state: RegistryState) -> dict[str, str]:
    return {node: s.public_key for node, s in state.live().items()}


# --- examples, one per rule --------------------------------------------------------------


def test_grant_with_a_key_joins_with_cause_and_block() -> None:
    _, out = run(grant(1, "node-a", A.upper().replace("0X", "0x"), key(1)))
    assert out == [NodeJoined("node-a", 1, A, key(1), "1-0", 1)]


def test_keys_are_per_owner() -> None:
    state, _ = run(grant(1, "node-a", A, key(1)), grant(2, "node-b", B, key(2)))
    assert live_keys(state) == {"node-a": key(1), "node-b": key(2)}


def test_grant_without_key_uses_the_owners_key_or_waits_for_one() -> None:
    state, out = run(grant(1, "node-c", C), rekey(C, key(3)))
    assert out == [NodeJoined("node-c", 1, C, key(3), "2-0", 2)]
    state, _ = run(grant(1, "node-a", A, key(1)), revoke(1, "node-a"), grant(2, "node-z", A))
    assert live_keys(state) == {"node-z": key(1)}


def test_transfer_drops_the_old_owners_key() -> None:
    events: list[ChainEvent] = [grant(1, "node-a", A, key(1)), transfer(1, A, C)]
    assert last_step(*events) == [NodeLeft("node-a", "transferred", "2-0", 2)]
    events.append(rekey(C, key(3)))
    assert last_step(*events) == [NodeJoined("node-a", 1, C, key(3), "3-0", 3)]


def test_transfer_to_an_owner_with_a_key_changes_the_peer() -> None:
    events: list[ChainEvent] = [
        grant(1, "node-a", A, key(1)),
        grant(2, "node-b", B, key(2)),
        revoke(2, "node-b"),
    ]
    events.append(transfer(1, A, B))
    assert last_step(*events) == [NodeChanged("node-a", 1, B, key(2), "4-0", 4)]


def test_key_update_rekeys_every_active_token_of_the_owner() -> None:
    events: list[ChainEvent] = [
        grant(1, "node-a", A, key(1)),
        grant(2, "node-b", A),  # same owner: same key, so node-b loses to token 1
        grant(3, "node-r", A),
        revoke(3, "node-r"),
        rekey(A, key(9)),
    ]
    state, _ = run(*events)
    assert last_step(*events) == [NodeChanged("node-a", 1, A, key(9), "5-0", 5)]
    assert state.status["node-b"].public_key == key(9)
    assert "node-r" not in state.status


def test_duplicate_node_lowest_token_wins_and_the_loser_takes_over() -> None:
    events: list[ChainEvent] = [grant(5, "node-x", A, key(1)), grant(3, "node-x", B, key(2))]
    assert last_step(*events) == [
        Conflict("duplicate-node", "node-x", 5, 3, "2-0", 2),
        NodeChanged("node-x", 3, B, key(2), "2-0", 2),
    ]
    events.append(grant(7, "node-x", C, key(3)))
    assert last_step(*events) == [Conflict("duplicate-node", "node-x", 7, 3, "3-0", 3)]
    events.append(revoke(3, "node-x"))
    assert last_step(*events) == [NodeChanged("node-x", 5, A, key(1), "4-0", 4)]


def test_duplicate_key_lowest_token_wins_and_the_loser_takes_over() -> None:
    events: list[ChainEvent] = [grant(2, "node-b", B, key(7)), grant(1, "node-a", A, key(7))]
    assert last_step(*events) == [
        Conflict("duplicate-key", "node-b", 2, 1, "2-0", 2),
        NodeLeft("node-b", "key-conflict", "2-0", 2),
        NodeJoined("node-a", 1, A, key(7), "2-0", 2),
    ]
    events.append(revoke(1, "node-a"))
    # leaves come before joins: an agent never sees one key on two peers
    assert last_step(*events) == [
        NodeLeft("node-a", "revoked", "3-0", 3),
        NodeJoined("node-b", 2, B, key(7), "3-0", 3),
    ]


def test_duplicate_key_loser_joins_when_the_winner_changes_key() -> None:
    events: list[ChainEvent] = [
        grant(1, "node-a", A, key(7)),
        grant(2, "node-b", B, key(7)),
        rekey(A, key(8)),
    ]
    assert last_step(*events) == [
        NodeChanged("node-a", 1, A, key(8), "3-0", 3),
        NodeJoined("node-b", 2, B, key(7), "3-0", 3),
    ]


def test_revoke_of_an_unknown_token_is_an_anomaly_and_recorded() -> None:
    state, out = run(revoke(9, "node-q"))
    assert [(type(o), getattr(o, "kind", None), getattr(o, "token_id", None)) for o in out] == [
        (Anomaly, "unknown-token", 9)
    ]
    assert state.tokens[9].active is False
    assert state.live() == {}


def test_transfer_of_an_unknown_token_is_an_anomaly() -> None:
    _, out = run(transfer(4, A, B))
    assert len(out) == 1
    assert isinstance(out[0], Anomaly)
    assert out[0].kind == "unknown-token"


def test_empty_key_update_removes_the_peer() -> None:
    events: list[ChainEvent] = [grant(1, "node-a", A, key(1)), rekey(A, "")]
    assert last_step(*events) == [NodeLeft("node-a", "no-key", "2-0", 2)]


VALID_KEY = key(42)
HOSTILE_NODE_IDS = [
    "node\n[Peer]\nPublicKey = x",
    "AllowedIPs = 0.0.0.0/0",
    "../etc",
    "a\x00b",
    "n" * 100_000,
    "-rf",
    "n\u043ede",  # Cyrillic o
    "",
    "..",
    "node a",
]
HOSTILE_KEYS = [
    VALID_KEY + "\n[Peer]\nAllowedIPs = 0.0.0.0/0",
    "AllowedIPs = 0.0.0.0/0",
    "../etc/wireguard/wg0.conf",
    VALID_KEY[:20] + "\x00" + VALID_KEY[21:],
    "K" * 100_000,
    "-" + VALID_KEY[1:],
    "\u0410" + VALID_KEY[1:],  # Cyrillic A
    "A" * 43 + "=",  # 32 zero bytes
    VALID_KEY[:-1],
]


def _assert_escaped(out: list[RegistryChange], hostile: str) -> None:
    for change in out:
        assert not isinstance(change, NodeJoined | NodeChanged)
        if isinstance(change, Anomaly):
            assert "\n" not in change.detail
            assert "\x00" not in change.detail
            assert len(change.detail) < 300
        if len(hostile) > 64 or "\n" in hostile:
            assert hostile not in encode(change).decode()


@pytest.mark.parametrize("node", HOSTILE_NODE_IDS)
def test_hostile_node_id_is_an_anomaly_and_never_live(node: str) -> None:
    state, out = run(grant(1, node, A, VALID_KEY), grant(2, node, B, key(1)))
    assert [o.kind for o in out if isinstance(o, Anomaly)] == ["invalid-node-id"] * 2
    assert state.live() == {}
    _assert_escaped(out, node)


@pytest.mark.parametrize("bad_key", HOSTILE_KEYS)
def test_hostile_key_is_an_anomaly_and_never_live(bad_key: str) -> None:
    state, out = run(
        grant(1, "node-a", A, key(1)), rekey(A, bad_key), grant(2, "node-b", B, bad_key)
    )
    assert [o.kind for o in out if isinstance(o, Anomaly)] == ["invalid-key"] * 2
    assert out[2] == NodeLeft("node-a", "invalid-key", "2-0", 2)
    assert state.live() == {}
    _assert_escaped(out[1:], bad_key)


def test_take_changes_returns_only_what_changed() -> None:
    state, _ = run(grant(1, "node-a", A, key(1)), grant(2, "node-b", B, key(2)))
    first, deleted = FOLD.take_changes(state)
    assert set(first) == {"t:1", "t:2", f"k:{A}", f"k:{B}"}
    assert deleted == set()
    state, _ = FOLD.apply(state, "3-0", log([rekey(A, "")], first=3)[0][1])
    assert FOLD.take_changes(state) == ({}, {f"k:{A}"})
    assert FOLD.take_changes(state) == ({}, set())


def test_load_rebuilds_the_published_view() -> None:
    state, _ = run(
        grant(1, "node-a", A, key(7)), grant(2, "node-b", B, key(7)), grant(3, "node-c", C, key(3))
    )
    loaded = FOLD.load(dump(state))
    assert loaded.status == state.status
    _, out = FOLD.apply(loaded, "4-0", log([revoke(1, "node-a")], first=4)[0][1])
    assert [type(o) for o in out] == [NodeLeft, NodeJoined]


# --- properties over random logs -----------------------------------------------------------

TOKENS = st.integers(1, 6)
NODES = st.sampled_from(["n1", "n2", "n3", "n4", "bad\n[Peer]"])
OWNERS = st.sampled_from([A, B, C, A.upper().replace("0X", "0x")])
KEYS = st.sampled_from([key(1), key(2), key(3), "", "AllowedIPs = 0.0.0.0/0\n"])
EVENTS = st.one_of(
    st.builds(NodeAccessGranted, TOKENS, NODES, OWNERS, KEYS),
    st.builds(NodeAccessRevoked, TOKENS, NODES),
    st.builds(NodeAccessTransferred, TOKENS, OWNERS, OWNERS),
    st.builds(PublicKeyUpdated, OWNERS, KEYS),
)
LOGS = st.lists(EVENTS, max_size=40)


def _indexes(state: RegistryState) -> tuple[object, ...]:
    return (
        state.status,
        state.candidates,
        state.winners,
        state.candidate_key,
        state.owner_tokens,
        state.node_tokens,
    )


@settings(max_examples=200, deadline=None)
@given(LOGS)
def test_folding_twice_gives_identical_state_and_outputs(events: list[ChainEvent]) -> None:
    s1, o1 = run(*events)
    s2, o2 = run(*events)
    assert o1 == o2
    assert dump(s1) == dump(s2)
    assert _indexes(s1) == _indexes(s2)


@settings(max_examples=200, deadline=None)
@given(LOGS)
def test_incremental_view_equals_a_full_recompute(events: list[ChainEvent]) -> None:
    state = RegistryState()
    for entry_id, entry in log(events):
        state, _ = FOLD.apply(state, entry_id, entry)
        assert _indexes(FOLD.load(dump(state))) == _indexes(state)


@settings(max_examples=200, deadline=None)
@given(LOGS)
def test_outputs_are_an_exact_diff_of_the_live_set(events: list[ChainEvent]) -> None:
    view: dict[str, str] = {}
    state = RegistryState()
    for entry_id, entry in log(events):
        state, out = FOLD.apply(state, entry_id, entry)
        for change in out:
            if isinstance(change, NodeJoined):
                assert change.node_id not in view
                view[change.node_id] = change.public_key
            elif isinstance(change, NodeChanged):
                assert change.node_id in view
                view[change.node_id] = change.public_key
            elif isinstance(change, NodeLeft):
                del view[change.node_id]
            else:
                assert isinstance(change, Anomaly | Conflict)
            assert change.cause == entry_id
        assert view == live_keys(state)
        assert len(set(view.values())) == len(view)
        assert all(is_valid_node_id(n) and is_valid_wg_key(k) for n, k in view.items())


@settings(max_examples=200, deadline=None)
@given(LOGS, st.data())
def test_persist_and_reload_anywhere_equals_folding_straight(
    events: list[ChainEvent], data: st.DataObject
) -> None:
    entries = log(events)
    straight, expected = fold(entries)
    cut = data.draw(st.integers(0, len(entries)))
    stored: dict[str, bytes] = {}
    state = FOLD.load(stored)
    outputs: list[RegistryChange] = []
    for i, (entry_id, entry) in enumerate(entries):
        if i == cut:  # commit, crash, restart from the stored hash
            to_set, to_del = FOLD.take_changes(state)
            stored.update(to_set)
            for name in to_del:
                stored.pop(name, None)
            state = FOLD.load(stored)
        state, out = FOLD.apply(state, entry_id, entry)
        outputs.extend(out)
    to_set, to_del = FOLD.take_changes(state)
    stored.update(to_set)
    for name in to_del:
        stored.pop(name, None)
    assert outputs == expected
    assert stored == dump(straight)
    assert _indexes(state) == _indexes(straight)


@settings(max_examples=300, deadline=None)
@given(LOGS)
def test_quick_steps_equal_the_general_step(events: list[ChainEvent]) -> None:
    """The common events' quick folds (``consumers/registry/quick.py``) change the state and
    output exactly what the general step does, event by event."""
    entries = log(events)
    quick, out_quick = fold(entries)
    with mock.patch.dict(QUICK, clear=True):
        general, out_general = fold(entries)
    assert out_quick == out_general
    assert dump(quick) == dump(general)
    assert _indexes(quick) == _indexes(general)
    assert quick.dirty_tokens == general.dirty_tokens
    assert quick.dirty_owners == general.dirty_owners


def test_quick_steps_take_the_common_events() -> None:
    """Grants, rotations, transfers and revocations of one node's token are all quick."""
    taken: list[str] = []
    wrapped = {kind: lambda *a, q=q: taken.append(q.__name__) or q(*a) for kind, q in QUICK.items()}
    with mock.patch.dict(QUICK, wrapped):
        state, out = run(
            grant(1, "n1", A, key(1)),
            rekey(A, key(2)),
            transfer(1, A, B),
            rekey(B, key(3)),
            revoke(1, "n1"),
        )
    assert taken == ["granted", "key_event", "transferred", "key_event", "revoked"]
    assert [type(o) for o in out] == [NodeJoined, NodeChanged, NodeLeft, NodeJoined, NodeLeft]
    assert state.live() == {}


@pytest.mark.parametrize(
    "last",
    [
        revoke(1, "n1"),
        transfer(1, A, C),
        rekey(A, key(3)),
        rekey(B, key(3)),
        grant(3, "n3", C, key(1)),
    ],
)
def test_quick_steps_leave_shared_keys_to_the_general_step(last: ChainEvent) -> None:
    """When two nodes share a key, an event of either changes who keeps the peer."""
    events = (grant(1, "n1", A, key(1)), grant(2, "n2", B, key(1)), last)
    quick, out_quick = fold(log(events))
    with mock.patch.dict(QUICK, clear=True):
        general, out_general = fold(log(events))
    assert out_quick == out_general
    assert _indexes(quick) == _indexes(general)
    assert dump(quick) == dump(general)


@pytest.mark.parametrize("node", ["n2", "n3"])
def test_regrant_of_a_winning_token_to_another_node_keeps_the_indexes_exact(node: str) -> None:
    """The winner of a shared key is re-granted for another node: the key's candidates are
    rebuilt from tokens that name other nodes than before (docs/design.md §4)."""
    events = [
        grant(1, "n1", A, key(1)),
        grant(2, "n2", B, key(1)),
        grant(3, "n4", C, key(1)),
        grant(1, node, C),
    ]
    state = RegistryState()
    for entry_id, entry in log(events):
        state, _ = FOLD.apply(state, entry_id, entry)
        assert _indexes(FOLD.load(dump(state))) == _indexes(state)
    assert state.winners[key(1)] == (1, node)
    assert "n1" not in state.status


def test_regrant_of_a_sole_winner_to_a_node_sorted_first() -> None:
    """Node ``n0`` enters the key while ``n5``, whose token it takes, still holds it."""
    state, out = run(grant(1, "n5", A, key(1)), grant(1, "n0", A))
    assert state.winners[key(1)] == (1, "n0")
    assert _indexes(FOLD.load(dump(state))) == _indexes(state)
    assert [type(o) for o in out] == [NodeJoined, NodeLeft, NodeJoined]
