"""The address fold (docs/design.md §8): examples for each rule, then properties of registry + ipam."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from unittest import mock

import msgspec
import pytest
from factories import wg_key as key
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.ipam import allocate
from consumers.ipam.allocate import IpamFold, IpamState
from consumers.registry import fold as registry
from shared.errors import DecodeError, SettingsError
from shared.events import (
    AllocationPending,
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
    PeerRemove,
    PeersChange,
    PeersSnapshot,
    PeerUpsert,
    PublicKeyUpdated,
    RegistryChange,
)
from shared.settings import Settings
from shared.validate import is_valid_node_id, is_valid_wg_key

A = "0x" + "a" * 40


def joined(node: str, block: int, k: int = 1) -> NodeJoined:
    return NodeJoined(node, 1, A, key(k), f"e{block}", block)


def changed(node: str, block: int, k: int = 2) -> NodeChanged:
    return NodeChanged(node, 1, A, key(k), f"e{block}", block)


def left(node: str, block: int) -> NodeLeft:
    return NodeLeft(node, "revoked", f"e{block}", block)


class Run:
    """Feeds registry changes to one ipam fold, entry ids ``r1``, ``r2``, ..."""

    def __init__(self, ipam: IpamFold) -> None:
        self.ipam = ipam
        self.state = ipam.initial()
        self.n = 0

    def __call__(self, *changes: RegistryChange) -> list[PeersChange]:
        out: list[PeersChange] = []
        for change in changes:
            self.n += 1
            self.state, step = self.ipam.apply(self.state, f"r{self.n}", change)
            out.extend(step)
        return out

    def ip(self, *changes: RegistryChange) -> str:
        """The address of the one PeerUpsert that ``changes`` produce."""
        ups = [o for o in self(*changes) if isinstance(o, PeerUpsert)]
        assert len(ups) == 1, ups
        return ups[0].ipv4


def test_join_gets_a_usable_address_with_cause_origin_and_block() -> None:
    run = Run(IpamFold("10.88.0.0/16"))
    [out] = run(joined("node-a", 7))
    assert isinstance(out, PeerUpsert)
    assert (out.node_id, out.public_key, out.cause, out.origin, out.block_number) == (
        "node-a",
        key(1),
        "r1",
        "e7",
        7,
    )
    address = ipaddress.IPv4Address(out.ipv4)
    assert address in ipaddress.IPv4Network("10.88.0.0/16")
    assert out.ipv4 not in {"10.88.0.0", "10.88.255.255"}
    assert out.ipv6 is None


def test_first_address_depends_only_on_the_node_id() -> None:
    one, two = Run(IpamFold()), Run(IpamFold())
    two(joined("node-x", 1), joined("node-y", 2))
    assert one.ip(joined("node-a", 5)) == two.ip(joined("node-a", 9))


def test_network_and_broadcast_are_never_used() -> None:
    run = Run(IpamFold("10.0.0.0/30", quarantine_blocks=0))
    ips = {run.ip(joined("node-a", 1)), run.ip(joined("node-b", 1))}
    assert ips == {"10.0.0.1", "10.0.0.2"}


def test_address_is_sticky_across_key_changes_and_transfers() -> None:
    run = Run(IpamFold())
    first = run.ip(joined("node-a", 1))
    assert run.ip(changed("node-a", 2, k=5)) == first
    transferred = NodeChanged("node-a", 1, "0x" + "b" * 40, key(6), "e3", 3)
    [out] = run(transferred)
    assert out == PeerUpsert("node-a", key(6), first, "r3", "e3", 3)


def test_a_returning_node_gets_its_old_address_back() -> None:
    run = Run(IpamFold(quarantine_blocks=10))
    first = run.ip(joined("node-a", 1))
    assert run(left("node-a", 2)) == [PeerRemove("node-a", "r2", "e2", 2)]
    run(joined("node-b", 3), joined("node-c", 4))
    assert run.ip(joined("node-a", 5)) == first  # inside its own quarantine: fine
    run(left("node-a", 6))
    assert run.ip(joined("node-a", 100)) == first  # after expiry, still free


def test_quarantine_keeps_others_out_until_it_expires() -> None:
    run = Run(IpamFold("10.0.0.0/30", quarantine_blocks=5))
    a = run.ip(joined("node-a", 1))
    b = run.ip(joined("node-b", 1))
    run(left("node-a", 10))
    assert run(joined("node-c", 11)) == [AllocationPending("node-c", "r4", "e11", 11)]
    anomaly = Anomaly("invalid-key", "x", "e14", 14)
    assert run(anomaly) == []  # block 14 < 10 + 5: still quarantined
    conflict = Conflict("duplicate-key", "node-q", 3, 1, "e15", 15)
    assert run(conflict) == [PeerUpsert("node-c", key(1), a, "r6", "e15", 15)]
    assert b != a


def test_exhausted_pool_is_pending_then_fifo_when_space_frees() -> None:
    run = Run(IpamFold("10.0.0.0/30", quarantine_blocks=0))
    a = run.ip(joined("node-a", 1))
    b = run.ip(joined("node-b", 1))
    assert run(joined("node-c", 2), joined("node-d", 3)) == [
        AllocationPending("node-c", "r3", "e2", 2),
        AllocationPending("node-d", "r4", "e3", 3),
    ]
    assert run(changed("node-d", 4, k=9)) == []  # still waiting, key noted
    assert run(left("node-a", 5)) == [
        PeerRemove("node-a", "r6", "e5", 5),
        PeerUpsert("node-c", key(1), a, "r6", "e5", 5),
    ]
    assert run(left("node-b", 6)) == [
        PeerRemove("node-b", "r7", "e6", 6),
        PeerUpsert("node-d", key(9), b, "r7", "e6", 6),
    ]


def test_a_pending_node_that_leaves_is_dropped_from_the_queue() -> None:
    run = Run(IpamFold("10.0.0.0/30", quarantine_blocks=0))
    run(joined("node-a", 1), joined("node-b", 1), joined("node-c", 2), joined("node-d", 2))
    run(left("node-c", 3))
    assert [o.node_id for o in run(left("node-a", 4)) if isinstance(o, PeerUpsert)] == ["node-d"]
    assert run.state.pending == {}


def test_ipv6_is_optional_and_uses_the_same_host_offset() -> None:
    run = Run(IpamFold("10.88.0.0/16", "fd00:88::/64"))
    [out] = run(joined("node-a", 1))
    assert isinstance(out, PeerUpsert)
    offset = int(ipaddress.IPv4Address(out.ipv4)) - int(ipaddress.IPv4Address("10.88.0.0"))
    assert out.ipv6 == str(ipaddress.IPv6Address("fd00:88::") + offset)


@pytest.mark.parametrize("pool", ["10.88.0.0/16", "10.64.0.0/12", "192.168.7.0/30"])
def test_addresses_are_the_pool_offsets_in_every_octet(pool: str) -> None:
    """Addresses are formatted from cached /24 prefixes: every offset still gives its own."""
    ipam = IpamFold(pool)
    base = ipaddress.IPv4Network(pool).network_address
    offsets = {1, 2, 254, 255, 256, 257, 511, 65535, 65536, ipam.usable, ipam.size // 2}
    for offset in sorted(o for o in offsets if 1 <= o <= ipam.usable) * 2:
        assert ipam.addresses(offset)[0] == str(base + offset)


def test_conflicts_and_anomalies_produce_nothing() -> None:
    run = Run(IpamFold())
    assert run(Conflict("duplicate-node", "node-a", 2, 1, "e1", 1)) == []
    assert run(Anomaly("unknown-token", "revoke", "e2", 2, 4)) == []


@pytest.mark.parametrize(
    ("node", "k"),
    [("node\n[Peer]", key(1)), ("node-a", key(1) + "\nAllowedIPs = 0.0.0.0/0"), ("-x", key(1))],
)
def test_hostile_peer_past_the_registry_is_refused(node: str, k: str) -> None:
    ipam = IpamFold()
    with pytest.raises(DecodeError):
        ipam.apply(ipam.initial(), "r1", NodeJoined(node, 1, A, k, "e1", 1))


def test_from_settings_and_a_changed_pool_is_refused_on_load() -> None:
    ipam = IpamFold.from_settings(
        Settings(pool="10.1.0.0/24", pool6="fd00::/64", quarantine_blocks=3)
    )
    assert (str(ipam.pool), str(ipam.pool6), ipam.quarantine_blocks) == (
        "10.1.0.0/24",
        "fd00::/64",
        3,
    )
    state, _ = ipam.apply(ipam.initial(), "r1", joined("node-a", 1))
    with pytest.raises(SettingsError):
        IpamFold("10.2.0.0/24", "fd00::/64").load(ipam.dump(state))


def test_take_changes_returns_only_what_changed() -> None:
    ipam = IpamFold(quarantine_blocks=5)
    run = Run(ipam)
    run(joined("node-a", 1))
    first, _ = ipam.take_changes(run.state)
    assert set(first) == {"meta", "n:node-a"}
    run(left("node-a", 1))
    to_set, to_del = ipam.take_changes(run.state)
    assert set(to_set) == {"n:node-a", f"q:{run.state.nodes['node-a'].offset}"}
    assert to_del == set()
    run(Anomaly("x", "y", "e9", 9))
    to_set, to_del = ipam.take_changes(run.state)
    assert (set(to_set), to_del) == ({"meta"}, {f"q:{run.state.nodes['node-a'].offset}"})


# --- properties: the registry + ipam pipeline over random chain logs ------------------------

OWNERS = ["0x" + c * 40 for c in "abcde"]
NODES = st.sampled_from(["n1", "n2", "n3", "n4", "n5", "bad\n[Peer]", "-x"])
KEYS = st.sampled_from([*(key(i) for i in range(1, 6)), "", "AllowedIPs = 0.0.0.0/0\n"])
TOKENS = st.integers(1, 7)
OWNER = st.sampled_from(OWNERS)
GRANTS = st.builds(NodeAccessGranted, TOKENS, NODES, OWNER, KEYS)
EVENTS = st.one_of(
    GRANTS,
    GRANTS,  # twice as likely: enough live nodes to exhaust the pool
    st.builds(NodeAccessRevoked, TOKENS, NODES),
    st.builds(NodeAccessTransferred, TOKENS, OWNER, OWNER),
    st.builds(PublicKeyUpdated, OWNER, KEYS),
)
#: (event, blocks since the previous event)
LOGS = st.lists(st.tuples(EVENTS, st.integers(0, 3)), max_size=60)
#: Two or six addresses for up to five live nodes, so the pool runs out (quarantine helps).
IPAMS = st.builds(
    IpamFold,
    st.sampled_from(["10.0.0.0/30", "10.0.0.0/29"]),
    st.sampled_from([None, "fd00::/64"]),
    st.integers(0, 4),
)


def registry_changes(log: Sequence[tuple[ChainEvent, int]]) -> list[tuple[str, RegistryChange]]:
    """The registry stream that ``log`` produces, with entry ids ``r<n>``."""
    state = registry.RegistryState()
    changes: list[RegistryChange] = []
    block = 1
    for n, (event, gap) in enumerate(log, start=1):
        block += gap
        entry = LogEntry(1, "0xc0", block, "0x1", "0x2", 0, 0, event)
        state, out = registry.apply(state, f"{n}-0", entry)
        changes.extend(out)
    return [(f"r{i}", change) for i, change in enumerate(changes, start=1)]


def membership_changes(
    steps: Sequence[tuple[int, int | None, int]],
) -> list[tuple[str, RegistryChange]]:
    """A consistent registry stream from (node, key or None to leave, block gap) steps."""
    live: set[str] = set()
    changes: list[RegistryChange] = []
    block = 1
    for n, (i, k, gap) in enumerate(steps, start=1):
        node, block = f"n{i}", block + gap
        if k is None:
            if node in live:
                live.discard(node)
                changes.append(NodeLeft(node, "revoked", f"{n}-0", block))
        elif node in live:
            changes.append(NodeChanged(node, i, A, key(k), f"{n}-0", block))
        else:
            live.add(node)
            changes.append(NodeJoined(node, i, A, key(k), f"{n}-0", block))
    return [(f"r{i}", change) for i, change in enumerate(changes, start=1)]


#: Registry streams: from random chain logs, or straight membership churn (more pressure).
STREAMS = st.one_of(
    LOGS.map(registry_changes),
    st.lists(
        st.tuples(st.integers(1, 6), st.one_of(st.none(), st.integers(1, 3)), st.integers(0, 3)),
        min_size=8,
        max_size=60,
    ).map(membership_changes),
)


def fold_all(
    ipam: IpamFold, changes: list[tuple[str, RegistryChange]], state: IpamState | None = None
) -> tuple[IpamState, list[PeersChange]]:
    return allocate.fold(changes, state, ipam)


@settings(max_examples=150, deadline=None)
@given(STREAMS, IPAMS)
def test_pipeline_folds_identically_twice(
    changes: list[tuple[str, RegistryChange]], ipam: IpamFold
) -> None:
    s1, o1 = fold_all(ipam, changes)
    s2, o2 = fold_all(ipam, changes)
    assert o1 == o2
    assert ipam.dump(s1) == ipam.dump(s2)


@settings(max_examples=300, deadline=None)
@given(STREAMS, IPAMS)
def test_pipeline_addresses_are_unique_sticky_and_quarantined(
    changes: list[tuple[str, RegistryChange]], ipam: IpamFold
) -> None:
    peers: dict[str, str] = {}  # node -> address, as the peers stream says
    last: dict[str, str] = {}  # node -> last address it held
    released: dict[str, tuple[str, int]] = {}  # address -> (node, block released)
    live: set[str] = set()  # live members, as the registry stream says
    pending: set[str] = set()
    state = ipam.initial()
    for entry_id, change in changes:
        if isinstance(change, NodeJoined | NodeChanged):
            live.add(change.node_id)
        elif isinstance(change, NodeLeft):
            live.discard(change.node_id)
        state, out = ipam.apply(state, entry_id, change)
        for o in out:
            if isinstance(o, PeerUpsert):
                assert is_valid_node_id(o.node_id)
                assert is_valid_wg_key(o.public_key)
                assert "\n" not in o.public_key + o.node_id
                if o.node_id in peers:  # a live peer keeps its address
                    assert peers[o.node_id] == o.ipv4
                elif o.node_id in last and last[o.node_id] not in peers.values():
                    was = released.get(last[o.node_id])
                    if was is None or was[0] == o.node_id:  # nobody took it in between
                        assert o.ipv4 == last[o.node_id]
                holder = released.get(o.ipv4)
                if holder is not None and holder[0] != o.node_id:
                    assert o.block_number >= holder[1] + ipam.quarantine_blocks
                peers[o.node_id] = last[o.node_id] = o.ipv4
                released.pop(o.ipv4, None)
                pending.discard(o.node_id)
                assert (o.ipv6 is None) == (ipam.pool6 is None)
            elif isinstance(o, PeerRemove):
                if o.node_id in peers:
                    released[peers.pop(o.node_id)] = (o.node_id, state.clock)
                pending.discard(o.node_id)
            else:
                pending.add(o.node_id)
        assert len(set(peers.values())) == len(peers)  # no two live members share an address
        assert set(peers) | pending == live
        assert not set(peers) & pending
        assert pending == set(state.pending)
        assert not pending or ipam.free_count(state) == 0  # nobody waits while space is free


@settings(max_examples=150, deadline=None)
@given(STREAMS, IPAMS, st.data())
def test_pipeline_persist_and_reload_anywhere_equals_folding_straight(
    changes: list[tuple[str, RegistryChange]], ipam: IpamFold, data: st.DataObject
) -> None:
    straight, expected = fold_all(ipam, changes)
    cut = data.draw(st.integers(0, len(changes)))
    stored: dict[str, bytes] = {}

    def commit(state: IpamState) -> None:
        to_set, to_del = ipam.take_changes(state)
        stored.update(to_set)
        for name in to_del:
            stored.pop(name, None)

    state, before = fold_all(ipam, changes[:cut])
    commit(state)
    state, after = fold_all(ipam, changes[cut:], ipam.load(stored))
    commit(state)
    assert before + after == expected
    assert stored == ipam.dump(straight)
    assert state.pending == straight.pending
    assert state.blocked == straight.blocked


def _marks(state: IpamState) -> tuple[object, ...]:
    """Everything of ``state`` a dump leaves out: indexes, queue, heap and change marks."""
    return (
        state.blocked,
        state.holder,
        state.quarantine,
        sorted(state.expiries),
        list(state.pending.items()),
        state.clock,
        state.seq,
        state.dirty,
    )


@settings(max_examples=300, deadline=None)
@given(STREAMS, IPAMS)
def test_quick_steps_equal_the_general_step(
    changes: list[tuple[str, RegistryChange]], ipam: IpamFold
) -> None:
    """The common entries' quick steps (``allocate.QUICK``) change the state, its change
    marks and the outputs exactly as the general step does (small pools: pending nodes,
    quarantines falling due and exhausted pools all occur)."""
    quick, out_quick = fold_all(ipam, changes)
    with mock.patch.dict(allocate.QUICK, clear=True):
        general, out_general = fold_all(ipam, changes)
    assert out_quick == out_general
    assert ipam.dump(quick) == ipam.dump(general)
    assert _marks(quick) == _marks(general)
    assert ipam.snapshot(quick) == ipam.snapshot(general)


@settings(max_examples=150, deadline=None)
@given(STREAMS, IPAMS, st.data())
def test_snapshot_size_is_the_number_of_peers_in_the_snapshot(
    changes: list[tuple[str, RegistryChange]], ipam: IpamFold, data: st.DataObject
) -> None:
    """``snapshot_size`` (what the stage's snapshot cadence counts, instead of scanning the
    snapshot's bytes) is the number of peers ``snapshot`` holds, anywhere in a fold."""
    cut = data.draw(st.integers(0, len(changes)))
    for part in (changes[:cut], changes):
        state, _ = fold_all(ipam, part)
        peers = msgspec.json.decode(ipam.snapshot(state), type=PeersSnapshot).peers
        assert ipam.snapshot_size(state) == len(peers)


def test_quick_steps_take_the_common_entries() -> None:
    """A join, key changes and a leave into quarantine are all quick; a hostile peer, a node
    taking a quarantined address when it falls due and a leave without quarantine are not."""
    taken: list[str] = []

    def wrap(kind: type) -> object:
        quick = allocate.QUICK[kind]

        def recorded(*args: object) -> object:
            out = quick(*args)
            taken.append(kind.__name__ if out is not None else "general")
            return out

        return recorded

    with mock.patch.dict(allocate.QUICK, {kind: wrap(kind) for kind in allocate.QUICK}):
        run = Run(IpamFold("10.0.0.0/29", quarantine_blocks=2))
        run(joined("node-a", 1), changed("node-a", 2), changed("node-a", 3, k=3), left("node-a", 4))
        assert taken == ["NodeJoined", "NodeChanged", "NodeChanged", "NodeLeft"]
        taken.clear()
        run(joined("node-b", 9))  # node-a's quarantine falls due first
        assert taken == ["general"]
        with pytest.raises(DecodeError):
            run(NodeChanged("node-b", 1, A, "not a key", "e10", 10))
        assert taken == ["general", "general"]
        taken.clear()
        Run(IpamFold("10.0.0.0/29", quarantine_blocks=0))(joined("node-c", 1), left("node-c", 2))
        assert taken == ["NodeJoined", "general"]
