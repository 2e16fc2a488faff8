"""The pure access rules: every reason, from states the registry fold builds."""

from __future__ import annotations

from factories import wg_key as key

from consumers.access.decide import (
    DUPLICATE_NODE,
    GRANTED,
    INVALID_KEY,
    KEY_CONFLICT,
    KEY_MISMATCH,
    NO_KEY,
    NOT_MEMBER,
    NOT_OWNER,
    REVOKED,
    View,
    decide_address,
    decide_key,
)
from consumers.registry.fold import fold
from shared.events import (
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    PublicKeyUpdated,
)

A, B, C, D = ("0x" + c * 40 for c in "abcd")


def view_of(*events: ChainEvent) -> View:
    entries = [
        (f"{n}-0", LogEntry(1, "0x" + "12" * 20, n, f"0x{n:064x}", "0x01", 0, n, event))
        for n, event in enumerate(events, start=1)
    ]
    state, _ = fold(entries)
    return View(state)


def test_granted_mismatch_and_unknown() -> None:
    view = view_of(NodeAccessGranted(1, "node-a", A, key(1)))
    assert decide_key(view, "node-a", key(1)).reason == GRANTED
    assert decide_key(view, "node-a", key(1)).granted
    denied = decide_key(view, "node-a", key(2))
    assert (denied.granted, denied.reason, denied.token_id, denied.owner) == (
        False,
        KEY_MISMATCH,
        1,
        A,
    )
    assert decide_key(view, "node-b", key(1)).reason == NOT_MEMBER


def test_revoked_is_told_apart_from_never_a_member() -> None:
    view = view_of(NodeAccessGranted(1, "node-a", A, key(1)), NodeAccessRevoked(1, "node-a"))
    decision = decide_key(view, "node-a", key(1))
    assert (decision.reason, decision.token_id, decision.owner) == (REVOKED, 1, A)
    assert decide_address(view, "node-a", A).reason == REVOKED


def test_missing_or_hostile_key_is_no_key_or_invalid_key() -> None:
    hostile = key(3) + "\n[Peer]"
    view = view_of(
        NodeAccessGranted(1, "node-a", A, ""), NodeAccessGranted(2, "node-b", B, hostile)
    )
    no_key = decide_key(view, "node-a", key(1))
    assert no_key.reason == NO_KEY  # as /v1/nodes and `wgchain nodes` name it
    assert "no WireGuard key" in no_key.detail
    bad = decide_key(view, "node-b", key(3))
    assert bad.reason == INVALID_KEY
    assert "\n" not in bad.detail


def test_transfer_moves_the_key() -> None:
    view = view_of(
        NodeAccessGranted(1, "node-a", A, key(1)),
        PublicKeyUpdated(B, key(2)),
        NodeAccessTransferred(1, A, B),
    )
    assert decide_key(view, "node-a", key(1)).reason == KEY_MISMATCH
    assert decide_key(view, "node-a", key(2)).granted
    assert decide_address(view, "node-a", B).granted
    assert decide_address(view, "node-a", A).reason == NOT_OWNER


def test_duplicate_key_conflict() -> None:
    view = view_of(
        NodeAccessGranted(1, "node-a", A, key(1)), NodeAccessGranted(2, "node-b", B, key(1))
    )
    assert decide_key(view, "node-a", key(1)).granted
    decision = decide_key(view, "node-b", key(1))
    assert (decision.reason, decision.token_id) == (KEY_CONFLICT, 2)
    assert "node-a" in decision.detail


def test_duplicate_node_conflict_for_key_and_address() -> None:
    view = view_of(
        NodeAccessGranted(1, "node-a", A, key(1)), NodeAccessGranted(2, "node-a", B, key(2))
    )
    assert decide_key(view, "node-a", key(1)).granted
    loser = decide_key(view, "node-a", key(2))
    assert (loser.reason, loser.token_id, loser.owner) == (DUPLICATE_NODE, 2, B)
    assert decide_address(view, "node-a", A).granted
    by_address = decide_address(view, "node-a", B)
    assert (by_address.granted, by_address.reason, by_address.token_id) == (
        False,
        DUPLICATE_NODE,
        2,
    )


def test_address_checks() -> None:
    view = view_of(NodeAccessGranted(1, "node-a", A, ""))
    holder = decide_address(view, "node-a", A.upper().replace("0X", "0x"))
    assert holder.granted  # an active pass, even without a key (not live)
    assert not holder.live
    assert decide_address(view, "node-a", C).reason == NOT_OWNER
    assert decide_address(view, "node-z", A).reason == NOT_MEMBER


def test_view_index_follows_touched_tokens() -> None:
    view = view_of(NodeAccessGranted(1, "node-a", A, key(1)))
    assert view.nodes() == ["node-a"]
    view.state.tokens[2] = view.state.tokens[1].__class__("node-b", D, False)
    view.touch([2])
    assert view.nodes() == ["node-a", "node-b"]
    assert decide_key(view, "node-b", key(1)).reason == REVOKED
