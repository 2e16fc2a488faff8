"""The incremental desired peers equal ``desired_state`` recomputed from scratch.

Random change sequences on a small key and address space, so that conflicts (two
records with one key or one address, IPv6 clashes, records outside the pool,
hostile strings) are common; mesh, hubs and spokes; the node's own record and key
changing; announcements coming and going. After every batch the model must equal a
full recomputation, and the changes it reported must turn the previous state into
the new one. A spoke's table is limited to itself and the hubs (``Policy.needed``),
and must still give what the whole table gives.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.agent.desired import (
    DesiredPeer,
    PeerTable,
    Policy,
    announced_endpoint,
    desired_state,
)
from consumers.agent.peerset import DesiredPeers
from shared.events import AllocationPending, PeerRemove, PeerUpsert

NODES = [f"n{i}" for i in range(12)]
KEYS = [base64.b64encode(bytes([i + 1]) * 32).decode() for i in range(16)] + ["bad key"]
IPV4 = [f"10.88.0.{i}" for i in range(1, 16)] + ["10.88.0.2/32", "10.99.0.1", "x"]
IPV6 = [None] * 4 + ["fd00::1", "fd00::2", "fd00::3", "fe80::9", "nonsense"]
ENDPOINTS = [None, "192.0.2.1:51820", "host.example:1", "not an endpoint"]
OWN = "n0"

upserts = st.builds(
    lambda n, k, a, b: PeerUpsert(n, k, a, "1-0", "1-0", 1, b),
    st.sampled_from(NODES),
    st.sampled_from(KEYS),
    st.sampled_from(IPV4),
    st.sampled_from(IPV6),
)
own_upserts = st.builds(  # the host's own record: mostly live with its key, sometimes not
    lambda k, a: PeerUpsert(OWN, k, a, "1-0", "1-0", 1),
    st.sampled_from([KEYS[0], KEYS[0], KEYS[0], KEYS[1]]),
    st.sampled_from(["10.88.0.1", "10.88.0.1", "10.88.0.7", "10.99.0.1"]),
)
removals = st.builds(
    lambda n, pending: (AllocationPending if pending else PeerRemove)(n, "1-0", "1-0", 1),
    st.sampled_from(NODES),
    st.booleans(),
)
announcement = st.tuples(st.sampled_from(NODES), st.sampled_from(ENDPOINTS))
batch = st.tuples(
    st.lists(st.one_of(*[upserts] * 8, removals, removals, own_upserts), max_size=4),
    st.lists(announcement, max_size=2),
    st.sampled_from([None] * 8 + [KEYS[0], KEYS[1]]),  # the host's key changes
)
POLICIES = {
    "mesh": Policy(pool="10.88.0.0/16", endpoint_template="{node}.vpn.example:51820"),
    "mesh6": Policy(pool="10.88.0.0/16", pool6="fd00::/64"),
    "hub": Policy(pool="10.88.0.0/16", pool6="fd00::/64", topology="hub", hubs=("n0", "n3")),
    "spoke": Policy(pool="10.88.0.0/16", topology="hub", hubs=("n2", "n5", "n6")),
}


def raw(endpoint: str | None) -> str:
    return json.dumps({"endpoint": endpoint})


def endpoint_in(announcement: str | None) -> str | None:
    return announced_endpoint(announcement) if announcement is not None else None


def apply(state: dict[str, DesiredPeer], delta: dict[str, tuple[object, object]]) -> None:
    for node, (before, after) in delta.items():
        assert state.get(node) == before, node
        if after is None:
            state.pop(node)
        else:
            assert isinstance(after, DesiredPeer)
            state[node] = after


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
@settings(max_examples=250, deadline=None)
@given(batches=st.lists(batch, min_size=1, max_size=12))
def test_incremental_equals_full_recomputation(
    policy: Policy, batches: list[tuple[list[object], list[tuple[str, str | None]], str | None]]
) -> None:
    full = PeerTable()  # every record, for desired_state
    kept = PeerTable(policy.needed(OWN))  # what the agent keeps
    for table in (full, kept):
        table.apply(PeerUpsert(OWN, KEYS[0], "10.88.0.1", "1-0", "1-0", 1))
    model = DesiredPeers(OWN, policy)
    own_key = KEYS[0]
    announced: dict[str, str] = {}
    model.reset(kept.records, own_key)
    seen = {p.node_id: p for p in model.desired().peers}
    for entries, announcements, new_key in batches:
        kept.changes = {}
        for entry in entries:
            full.apply(entry)
            kept.apply(entry)
        for node, endpoint in announcements:
            if endpoint is None:
                announced.pop(node, None)
            else:
                announced[node] = raw(endpoint)
        # The agent reads a (re)joining node's announcement first (it forgot it), before
        # an incremental update as before a recomputation.
        joined = {n for n, old in kept.changes.items() if old is None and n in kept.records}
        apply(seen, model.announce({n: endpoint_in(announced.get(n)) for n in joined}))
        if new_key is not None and new_key != own_key:
            own_key = new_key
            delta = model.reset(kept.records, own_key)
        else:
            delta = model.update(kept.records, kept.changes)
        apply(seen, delta)
        apply(seen, model.announce({n: endpoint_in(announced.get(n)) for n, _ in announcements}))
        want = desired_state(full.records, OWN, own_key, announced, policy)
        assert model.desired() == want
        assert seen == {p.node_id: p for p in want.peers}


def test_a_conflict_falls_back_to_a_full_recomputation_and_a_plain_change_does_not() -> None:
    policy = Policy(pool="10.88.0.0/16")
    table = PeerTable()
    for i, node in enumerate(["a", "b", "c"], start=1):
        table.apply(PeerUpsert(node, KEYS[i - 1], f"10.88.0.{i}", "1-0", "1-0", 1))
    model = DesiredPeers("a", policy)
    model.reset(table.records, KEYS[0])
    before = model.full_recomputes
    table.changes = {}
    table.apply(PeerUpsert("b", KEYS[4], "10.88.0.2", "1-0", "1-0", 2))  # a key rotation
    delta = model.update(table.records, table.changes)
    assert set(delta) == {"b"}
    assert model.full_recomputes == before
    table.changes = {}
    table.apply(PeerUpsert("d", KEYS[5], "10.88.0.3", "1-0", "1-0", 3))  # c's address
    delta = model.update(table.records, table.changes)
    assert delta == {}  # d loses to c (node order), exactly as desired_state says
    assert model.full_recomputes == before + 1
    assert model.skipped == {"d": "ipv4 already used by another node"}


def test_a_spoke_keeps_only_itself_and_the_hubs() -> None:
    policy = Policy(pool="10.88.0.0/16", topology="hub", hubs=("h1", "h2"))
    table = PeerTable(policy.needed("s"))
    for i in range(1, 200):
        table.apply(PeerUpsert(f"x{i}", KEYS[i % 6], f"10.88.1.{i}", "1-0", "1-0", 1))
    table.apply(PeerUpsert("h2", KEYS[1], "10.88.0.2", "1-0", "1-0", 1))
    table.apply(PeerUpsert("s", KEYS[0], "10.88.0.9", "1-0", "1-0", 1))
    assert set(table.records) == {"h2", "s"}
    assert Policy(pool="10.88.0.0/16").needed("s") is None  # a mesh node needs everyone


def test_a_spoke_applies_a_hub_change_alone_and_moves_the_pools_to_the_next_hub() -> None:
    """A hub's key rotation on a spoke recomputes that hub only; when the hub that carries
    the pools leaves, the next live hub carries them (as desired_state says)."""
    policy = Policy(pool="10.88.0.0/16", topology="hub", hubs=("h1", "h2"))
    table = PeerTable(policy.needed("s"))
    table.apply(PeerUpsert("s", KEYS[0], "10.88.0.9", "1-0", "1-0", 1))
    table.apply(PeerUpsert("h1", KEYS[1], "10.88.0.1", "1-0", "1-0", 1))
    table.apply(PeerUpsert("h2", KEYS[2], "10.88.0.2", "1-0", "1-0", 1))
    model = DesiredPeers("s", policy)
    model.reset(table.records, KEYS[0])
    assert model.peers["h1"].allowed_ips == ("10.88.0.1/32", "10.88.0.0/16")
    before = model.full_recomputes
    table.changes = {}
    table.apply(PeerUpsert("h1", KEYS[3], "10.88.0.1", "1-0", "1-0", 2))  # h1's key rotation
    delta = model.update(table.records, table.changes)
    assert set(delta) == {"h1"}
    assert delta["h1"][1] == DesiredPeer("h1", KEYS[3], ("10.88.0.1/32", "10.88.0.0/16"), None, 25)
    table.changes = {}
    table.apply(PeerRemove("h1", "1-0", "1-0", 3))  # h1 leaves: h2 carries the pool
    delta = model.update(table.records, table.changes)
    assert set(delta) == {"h1", "h2"}
    assert model.peers["h2"].allowed_ips == ("10.88.0.2/32", "10.88.0.0/16")
    assert model.full_recomputes == before
    assert model.desired() == desired_state(table.records, "s", KEYS[0], {}, policy)
