"""Expiring passes in the folds (docs/design.md §5): expirations are facts, carried downstream.

The registry stores the latest ``SubscriptionUpdate`` of a token in chain order and
publishes it with the member (``NodeJoined``/``NodeChanged``.expires); ipam carries
it into ``PeerUpsert`` and its snapshots, keeping the address whatever the value.
No clock is read: the same log gives the same outputs. Hostile values and unknown
tokens never crash a fold.
"""

from __future__ import annotations

import msgspec
import pytest
from factories import wg_key as key

from consumers.access.decide import EXPIRED, GRANTED, View, decide_address, decide_key
from consumers.ipam.allocate import FOLD as IPAM
from consumers.ipam.allocate import fold as ipam_fold
from consumers.registry.fold import FOLD, dump, fold
from consumers.registry.warnings import ExpiryWarnings
from shared.events import (
    Anomaly,
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    NodeChanged,
    NodeJoined,
    PeersSnapshot,
    PeerUpsert,
    PublicKeyUpdated,
    SubscriptionUpdate,
)

A = "0x" + "a" * 40
B = "0x" + "b" * 40
T0 = 1_700_000_000


def log(events: list[ChainEvent]) -> list[tuple[str, LogEntry]]:
    return [
        (f"{n}-0", LogEntry(1, "0xc0", n, f"0x{n:x}", "0x1", 0, T0 + n, event))
        for n, event in enumerate(events, start=1)
    ]


def test_a_token_without_subscription_update_never_expires_and_is_stored_as_before() -> None:
    state, out = fold(log([NodeAccessGranted(1, "node-a", A, key(1))]))
    assert out == [NodeJoined("node-a", 1, A, key(1), "1-0", 1)]
    assert out[0].expires is None
    assert state.status["node-a"].expires is None
    assert b"expires" not in dump(state)["t:1"]  # byte for byte as before expirations


def test_the_latest_subscription_update_in_chain_order_sets_the_expiration() -> None:
    events: list[ChainEvent] = [
        NodeAccessGranted(1, "node-a", A, key(1)),
        SubscriptionUpdate(1, T0 + 100),
        SubscriptionUpdate(1, T0 + 50),  # later in chain order, earlier in time: it wins
        SubscriptionUpdate(1, T0 + 50),  # the same again: nothing changes
        PublicKeyUpdated(B, key(2)),
        NodeAccessTransferred(1, A, B),  # the expiration stays with the token
        SubscriptionUpdate(1, 0),  # cancelled: expired, a fact; still a member
    ]
    state, out = fold(log([*events[:1], *events[1:4]]))
    changes = [o for o in out if isinstance(o, NodeChanged)]
    assert [c.expires for c in changes] == [T0 + 100, T0 + 50]
    state, out = fold(log(events))
    assert state.tokens[1].expires == 0
    assert state.tokens[1].owner == B.lower()
    assert state.status["node-a"].live  # whether it is past is judged at decisions only
    assert state.status["node-a"].expires == 0
    # The state reloads with its expirations.
    again = FOLD.load(dump(state))
    assert again.status == state.status
    assert again.tokens == state.tokens


def test_ipam_carries_the_expiration_and_keeps_the_address() -> None:
    _, changes = fold(
        log(
            [
                NodeAccessGranted(1, "node-a", A, key(1)),
                NodeAccessGranted(2, "node-b", B, key(2)),
                SubscriptionUpdate(2, T0 + 20),
                SubscriptionUpdate(2, 0),
                SubscriptionUpdate(2, T0 + 3600),
            ]
        )
    )
    entries = [(f"{n}-0", c) for n, c in enumerate(changes, start=1)]
    state, peers = ipam_fold(entries)
    upserts = [p for p in peers if isinstance(p, PeerUpsert) and p.node_id == "node-b"]
    assert [p.expires for p in upserts] == [None, T0 + 20, 0, T0 + 3600]
    assert len({p.ipv4 for p in upserts}) == 1  # expired or renewed: the same address
    snapshot = msgspec.json.decode(IPAM.snapshot(state), type=PeersSnapshot)
    assert {p.node_id: p.expires for p in snapshot.peers} == {"node-a": None, "node-b": T0 + 3600}
    assert IPAM.load(IPAM.dump(state)).nodes == state.nodes
    assert b"expires" not in IPAM.dump(state)["n:node-a"]


@pytest.mark.parametrize("value", [0, 1, 2**63, 2**64 - 1])
def test_hostile_values_and_unknown_tokens_never_crash(value: int) -> None:
    events: list[ChainEvent] = [
        SubscriptionUpdate(7, value),  # a token never granted: an anomaly, kept for a grant
        NodeAccessGranted(1, "node-a", A, key(1)),
        SubscriptionUpdate(1, value),
        NodeAccessGranted(7, "node-g", B, key(7)),
        NodeAccessRevoked(1, "node-a"),
        SubscriptionUpdate(1, value + 1 if value < 2**64 - 1 else 0),
    ]
    state, out = fold(log(events))
    assert any(isinstance(o, Anomaly) and o.kind == "unknown-token" for o in out)
    joined = [o for o in out if isinstance(o, NodeJoined) and o.node_id == "node-g"]
    assert joined[0].expires == value
    assert FOLD.load(dump(state)).tokens == state.tokens
    entries = [(f"{n}-0", c) for n, c in enumerate(out, start=1)]
    ipam_fold(entries)  # no crash either


def test_check_judges_the_expiration_at_the_time_it_is_given() -> None:
    state, _ = fold(
        log([NodeAccessGranted(1, "node-a", A, key(1)), SubscriptionUpdate(1, T0 + 100)])
    )
    view = View(state)
    assert decide_key(view, "node-a", key(1)).granted  # no clock: the facts only
    assert decide_key(view, "node-a", key(1), now=T0 + 101, grace=2).reason == GRANTED
    late = decide_key(view, "node-a", key(1), now=T0 + 102, grace=2)
    assert (late.granted, late.reason, late.expires) == (False, EXPIRED, T0 + 100)
    assert decide_address(view, "node-a", A, now=T0 + 102, grace=2).reason == EXPIRED
    assert decide_address(view, "node-a", A, now=T0, grace=2).granted
    state, _ = fold(
        log([NodeAccessGranted(1, "node-a", A, key(1)), SubscriptionUpdate(1, 2**64 - 1)])
    )
    decision = decide_key(View(state), "node-a", key(1), now=T0, grace=2)
    assert decision.granted
    assert decide_key(View(state), "node-a", key(1), now=2.0**65, grace=2).detail


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def bind(self, **_: object) -> _Log:
        return self

    def warning(self, message: str, *args: object) -> None:
        self.lines.append(message.format(*args))


def test_the_registry_logs_a_pass_once_when_it_enters_the_warning_window() -> None:
    state, _ = fold(
        log(
            [
                NodeAccessGranted(1, "node-a", A, key(1)),
                NodeAccessGranted(2, "node-b", B, key(2)),
                SubscriptionUpdate(1, T0 + 3 * 3600),
            ]
        )
    )
    logged = _Log()
    warnings = ExpiryWarnings(window=3600, grace=2, log=logged, every=60)
    assert warnings.check(state, T0) == []  # 3 h away: not yet
    assert [e.node for e in warnings.check(state, T0 + 2 * 3600 + 1)] == ["node-a"]
    assert warnings.check(state, T0 + 2 * 3600 + 100) == []  # once
    assert len(logged.lines) == 1
    assert "node-a (token 1) expires in 59m59s" in logged.lines[0]
    # Renewed: a new pass, warned about again when it enters the window.
    FOLD.apply(state, "9-0", log([SubscriptionUpdate(1, T0 + 5 * 3600)])[0][1])
    assert warnings.check(state, T0 + 2 * 3600 + 200) == []
    assert [e.token_id for e in warnings.check(state, T0 + 4 * 3600 + 1)] == [1]
    assert ExpiryWarnings(window=0, grace=2, log=logged).check(state, T0 + 5 * 3600) == []
