"""Expiring passes: the agent's pure parts (and status's list) judge ``expires`` by a clock.

``desired_state`` leaves out a member whose pass has expired at ``now`` (and fails
closed when the host's own has); :class:`DesiredPeers` says when the next pass
expires and, when that time comes, removes just that peer; the state file keeps
each peer's expiration (and the host's own) so a held configuration can drop them.
Hostile values (0, 2^64-1, negative) are judged, never a crash.
"""

from __future__ import annotations

import base64
import random

import pytest
from rich.console import Console

from consumers.agent.desired import EXPIRED, PeerTable, Policy, desired_state
from consumers.agent.peerset import DesiredPeers
from consumers.agent.state import AppliedState, Ident, decode, encode_line, encode_snapshot
from consumers.registry.fold import RegistryState, Status, TokenRecord
from consumers.status.expiring import expiring
from consumers.status.model import Counts, FleetStatus, ListenerInfo
from consumers.status.render import render
from shared.events import PeerUpsert

OWN = "n0"
T0 = 1_700_000_000
GRACE = 2.0
POLICY = Policy(expiry_grace=GRACE)


def key(n: int) -> str:
    return base64.b64encode(bytes([n + 1]) * 32).decode()


def upsert(n: int, expires: int | None = None) -> PeerUpsert:
    return PeerUpsert(f"n{n}", key(n), f"10.88.0.{n + 1}", "1-0", "1-0", 1, None, expires)


def table(*entries: PeerUpsert) -> PeerTable:
    t = PeerTable()
    for entry in entries:
        assert t.apply(entry) is None
    return t


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_member_is_a_peer_until_its_expiration_plus_the_grace() -> None:
    t = table(upsert(0), upsert(1, T0 + 20), upsert(2))
    before = desired_state(t.records, OWN, key(0), {}, POLICY, now=T0 + 21.9)
    assert [p.node_id for p in before.peers] == ["n1", "n2"]
    assert before.peers[0].expires == T0 + 20
    after = desired_state(t.records, OWN, key(0), {}, POLICY, now=T0 + 22)
    assert [p.node_id for p in after.peers] == ["n2"]
    assert ("n1", EXPIRED) in after.skipped
    # Without a clock (``now`` None) nothing is judged: the fold's facts alone.
    assert len(desired_state(t.records, OWN, key(0), {}, POLICY).peers) == 2


@pytest.mark.parametrize(
    ("expires", "expired"),
    [(None, False), (0, True), (-5, True), (T0 - 3, True), (2**64 - 1, False), (2**63, False)],
)
def test_hostile_expirations_are_judged(expires: int | None, expired: bool) -> None:
    t = table(upsert(0), upsert(1, expires))
    got = desired_state(t.records, OWN, key(0), {}, POLICY, now=T0)
    assert (got.peers == ()) is expired
    model = DesiredPeers(OWN, POLICY)
    model.clock = Clock(T0)
    model.reset(t.records, key(0))
    assert (not model.peers) is expired
    assert model.next_deadline() is None or model.next_deadline() > T0  # type: ignore[operator]


def test_the_own_pass_expiring_fails_closed() -> None:
    t = table(upsert(0, T0 + 10), upsert(1), upsert(2))
    assert desired_state(t.records, OWN, key(0), {}, POLICY, now=T0).fail_closed is None
    late = desired_state(t.records, OWN, key(0), {}, POLICY, now=T0 + 12)
    assert late.fail_closed == EXPIRED
    assert late.peers == ()

    clock = Clock(T0)
    model = DesiredPeers(OWN, POLICY)
    model.clock = clock
    model.reset(t.records, key(0))
    assert len(model.peers) == 2
    assert model.own_expires == T0 + 10
    assert model.next_deadline() == T0 + 10 + GRACE
    clock.now = T0 + 12
    delta = model.expire(t.records)
    assert set(delta) == {"n1", "n2"}
    assert model.fail_closed == EXPIRED
    assert not model.peers
    # A renewal of the own pass brings everything back.
    t.changes = {}
    t.apply(upsert(0, T0 + 100))
    assert set(model.update(t.records, t.changes)) == {"n1", "n2"}
    assert model.fail_closed is None


def test_the_model_removes_a_peer_when_its_deadline_comes_and_a_renewal_restores_it() -> None:
    clock = Clock(T0)
    t = table(upsert(0), upsert(1, T0 + 20), upsert(2, T0 + 5), upsert(3))
    model = DesiredPeers(OWN, POLICY)
    model.clock = clock
    model.reset(t.records, key(0))
    assert set(model.peers) == {"n1", "n2", "n3"}
    assert model.next_deadline() == T0 + 5 + GRACE
    clock.now = T0 + 6
    assert model.expire(t.records) == {}  # within the grace
    clock.now = T0 + 7
    delta = model.expire(t.records)
    assert list(delta) == ["n2"]
    assert delta["n2"][1] is None
    assert model.skipped["n2"] == EXPIRED
    assert model.next_deadline() == T0 + 20 + GRACE
    # Renewed before it expires: the old deadline is forgotten, the new one counts.
    t.changes = {}
    t.apply(upsert(1, T0 + 40))
    model.update(t.records, t.changes)
    clock.now = T0 + 30
    assert model.expire(t.records) == {}
    assert model.next_deadline() == T0 + 40 + GRACE
    # The expired one renewed: back, with its new expiration.
    t.changes = {}
    t.apply(upsert(2, T0 + 60))
    delta = model.update(t.records, t.changes)
    peer = delta["n2"][1]
    assert peer is not None
    assert peer.expires == T0 + 60
    # Cancelled (expiration 0): gone at once.
    t.changes = {}
    t.apply(upsert(3, 0))
    delta = model.update(t.records, t.changes)
    assert delta["n3"][1] is None
    assert model.skipped["n3"] == EXPIRED


def test_the_model_equals_a_full_recomputation_as_time_passes() -> None:
    rng = random.Random(16)
    for _ in range(30):
        clock = Clock(T0)
        policy = Policy(topology=rng.choice(["mesh", "hub"]), hubs=("n1", "n2"), expiry_grace=1)
        t = table(upsert(0, rng.choice([None, T0 + 50])))
        model = DesiredPeers(OWN, policy)
        model.clock = clock
        model.reset(t.records, key(0))
        for _ in range(25):
            t.changes = {}
            for _ in range(rng.randint(0, 2)):
                n = rng.randint(0, 7)
                t.apply(upsert(n, rng.choice([None, 0, T0 + rng.randint(0, 80), 2**64 - 1])))
            clock.now += rng.uniform(0, 8)
            model.update(t.records, t.changes)
            model.expire(t.records)
            want = desired_state(t.records, OWN, key(0), {}, policy, now=clock.now)
            assert model.desired() == want


def test_the_state_file_keeps_expirations() -> None:
    ident = Ident("{1:0xabc}", "n0", "wg0")
    t = table(upsert(0), upsert(1, T0 + 20), upsert(2, 2**64 - 1))
    peers = {p.node_id: p for p in desired_state(t.records, OWN, key(0), {}, POLICY).peers}
    applied = AppliedState("5-0", 7, ("10.88.0.1/16",), None, peers, expires=T0 + 99)
    snap = b"".join(encode_snapshot(applied, ident))
    back = decode(snap, b"", ident)
    assert back.peers == peers
    assert back.expires == T0 + 99
    line = encode_line(1, AppliedState("6-0", 8, (), None, expires=None), {"n1": None})
    later = decode(snap, line, ident)
    assert set(later.peers) == {"n2"}
    assert later.expires is None
    # A file of the version before expirations reads as "never expires".
    old = snap.replace(b',"expires":' + str(T0 + 99).encode(), b"")
    assert decode(old, b"", ident).expires is None


def test_status_lists_the_passes_expiring_within_the_warning_window() -> None:
    state = RegistryState()
    for token, (node, expires, live) in enumerate(
        [
            ("soon", T0 + 3600, True),
            ("later", T0 + 2 * 86400, True),
            ("never", None, True),
            ("gone", T0 - 10, True),
            ("dead", T0 + 60, False),
            ("hostile", 2**64 - 1, True),
            ("sooner", T0 + 60, True),
        ],
        start=1,
    ):
        state.tokens[token] = TokenRecord(node, "0xowner", True, expires)
        state.status[node] = Status(live, token, "0xowner", key(token), "" if live else "no-key")
    found = expiring(state, T0, 86400, GRACE)
    assert [e.node for e in found] == ["sooner", "soon"]
    fleet = FleetStatus(
        network="n",
        generated_at=T0,
        listener=ListenerInfo(),
        stages=[],
        hosts=[],
        counts=Counts(),
    )
    assert fleet.expiring == []
    fleet.expiring = found
    out = Console(width=200, record=True)
    out.print(render(fleet, now=T0))
    text = out.export_text()
    assert "passes expiring soon (2)" in text
    assert "sooner  token 7  expires in 1m00s" in text
