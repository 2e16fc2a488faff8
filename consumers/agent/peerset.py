"""One host's desired peers, kept up to date change by change. Pure: no I/O.

:func:`consumers.agent.desired.desired_state` computes a node's peer set from every
record: O(members) per change. :class:`DesiredPeers` holds that result and, for a
batch of changed records, recomputes only their peers, and says which peers changed.

Why that equals ``desired_state``: there, a record's peer depends on the records
before it (in node order) only through the keys and addresses they have taken: a
record loses to an earlier one that took its key or IPv4 address (it is left out)
or its IPv6 address (it gets its IPv4 only). When no key or address is claimed
twice among the node itself and the records that can be peers, every record's peer
is a function of that record alone (and its endpoint). So the model counts claims;
a batch whose records' old and new claims are all unshared is applied record by
record, and any other batch is recomputed in full by ``desired_state``'s own loop.
Upstream resolves duplicate keys and allocates unique addresses, so that fallback
is rare. Also recomputed in full: a change of the node's own record or key (fail
closed, addresses), and :meth:`DesiredPeers.reset` (a snapshot, a retraction, the end
of a hold). A spoke peers with the hubs only: a change of another record changes
nothing; a hub's change is placed like a mesh record's, then the pools are moved to
the first live hub if that changed (``desired.route_through_hub``). Each of 1,000
spokes of one process applies a hub's key rotation without recomputing the others. ``tests/unit/test_agent_peerset.py`` checks the
equality over random change sequences with conflicts, mesh and hub.

Expiring passes: whether a record's pass has expired never changes what it claims
(``desired.compute``), so when a deadline passes (expiration plus the grace, by
:attr:`DesiredPeers.clock`) only that record's peer is recomputed (:meth:`expire`);
the node's own deadline, or any on a spoke, recomputes everything. A heap of the
deadlines still ahead says when the next one is (:meth:`next_deadline`).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from consumers.agent.desired import (
    BAD_NODE_ID,
    EXPIRED,
    NO_OWN_KEY,
    Desired,
    DesiredPeer,
    PeerRecord,
    Policy,
    claims_of,
    compute,
    ipv6_note,
    make_peer,
    pools_of,
    record_facts,
)

#: A changed peer: (before, after); None on one side means absent there.
Change = tuple[DesiredPeer | None, DesiredPeer | None]


class DesiredPeers:
    """The desired state of one node: peers by node id, addresses, fail-closed reason."""

    def __init__(self, node_id: str, policy: Policy) -> None:
        self.node_id = node_id
        self.policy = policy
        self.pools = pools_of(policy.pool, policy.pool6)
        self.own_public_key: str | None = None
        #: node id -> its announced endpoint (validated; nodes that announced none absent).
        self.endpoints: dict[str, str] = {}
        self.peers: dict[str, DesiredPeer] = {}
        #: node id -> why it is left out, or gets no IPv6 address.
        self.skipped: dict[str, str] = {}
        self.addresses: tuple[str, ...] = ()
        self.fail_closed: str | None = NO_OWN_KEY  # nothing computed yet
        #: How many times each key and address is claimed (the node's own, and peers').
        self._claims: dict[str, int] = {}
        #: Full recomputations so far (a batch with a conflict, an own change, a reset).
        self.full_recomputes = 0
        #: Unix time now (replaced in tests); expirations are judged by it.
        self.clock: Callable[[], float] = time.time
        #: (deadline, node) of every record whose pass expires later (may hold stale items).
        self._deadlines: list[tuple[float, str]] = []
        #: node -> its deadline still ahead (what makes an item of ``_deadlines`` current).
        self._deadline_of: dict[str, float] = {}
        #: Unix time the node's own pass expires (None: never, or no own record).
        self.own_expires: int | None = None
        #: On a spoke: the hub whose peer carries the pools (None: no hub, or not a spoke).
        self._routed: str | None = None

    def endpoint_of(self, node: str) -> str | None:
        return self.endpoints.get(node)

    def desired(self) -> Desired:
        """The whole state, as :func:`~consumers.agent.desired.desired_state` returns it."""
        return Desired(
            self.node_id if self.fail_closed != BAD_NODE_ID else "",
            self.addresses,
            tuple(self.peers[n] for n in sorted(self.peers)),
            self.fail_closed,
            tuple(sorted(self.skipped.items())),
        )

    # --- changes ---------------------------------------------------------------------

    def reset(
        self, table: Mapping[str, PeerRecord], own_public_key: str | None = None
    ) -> dict[str, Change]:
        """Recompute everything from ``table`` (and a new own key, if given)."""
        if own_public_key is not None:
            self.own_public_key = own_public_key
        self.full_recomputes += 1
        counts: dict[str, int] = {}
        now = self.clock()
        desired = compute(
            table,
            self.node_id,
            self.own_public_key,
            self.endpoint_of,
            self.policy,
            counts=counts,
            now=now,
        )
        self._deadlines, self._deadline_of = [], {}
        for node, record in table.items():
            self._schedule(node, record, now)
        own = table.get(self.node_id)
        self.own_expires = own.expires if own is not None else None
        peers = {p.node_id: p for p in desired.peers}
        delta = _diff(self.peers, peers)
        self.peers = peers
        self.skipped = dict(desired.skipped)
        self.addresses = desired.addresses
        self.fail_closed = desired.fail_closed
        self._claims = counts
        self._routed = self._route_hub()
        return delta

    def update(
        self, table: Mapping[str, PeerRecord], changed: Mapping[str, PeerRecord | None]
    ) -> dict[str, Change]:
        """Take in a batch: ``table`` is the new table, ``changed`` the changed nodes with
        their records before the batch (None: absent). Returns the peers that changed."""
        for node in changed:
            if node not in table:
                self.endpoints.pop(node, None)
        if not changed:
            return {}
        if self.node_id in changed:
            return self.reset(table)
        spoke = self.policy.is_spoke(self.node_id)
        if spoke:  # a spoke peers with the hubs only: no other record changes anything here
            hubs = self.policy.hubs
            changed = {node: old for node, old in changed.items() if node in hubs}
            if not changed:
                return {}
        if self.fail_closed:
            return {}  # no peers whatever the others do, until the own record changes
        facts: dict[str, tuple[str | None, str | None]] = {}
        if not self._recount(table, changed, facts):
            return self.reset(table)
        delta: dict[str, Change] = {}
        now = self.clock()
        for node in changed:
            self._place(node, table.get(node), delta, now, facts.get(node))
        if spoke:
            self._route(delta)
        return delta

    def next_deadline(self) -> float | None:
        """Unix time of the next pass to expire among the records (None: none will)."""
        heap = self._deadlines
        while heap and self._deadline_of.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: the record changed or is gone
        return heap[0][0] if heap else None

    def expire(self, table: Mapping[str, PeerRecord]) -> dict[str, Change]:
        """Judge the passes whose deadline has come (by :attr:`clock`): their peers go; the
        node's own, or any on a spoke, fails closed or recomputes everything."""
        now = self.clock()
        due: list[str] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, node = heapq.heappop(heap)
            if self._deadline_of.get(node) == deadline:
                del self._deadline_of[node]
                due.append(node)
        if not due:
            return {}
        if self.node_id in due or self.policy.is_spoke(self.node_id):
            return self.reset(table)
        if self.fail_closed:
            return {}
        delta: dict[str, Change] = {}
        for node in due:
            self._place(node, table.get(node), delta)
        return delta

    def _schedule(self, node: str, record: PeerRecord | None, now: float) -> None:
        """Note ``record``'s deadline if it is still ahead (forgetting any earlier one)."""
        deadline = self.policy.deadline(record.expires) if record is not None else None
        if deadline is None or deadline <= now:
            self._deadline_of.pop(node, None)
            return
        if self._deadline_of.get(node) != deadline:
            self._deadline_of[node] = deadline
            heapq.heappush(self._deadlines, (deadline, node))

    def announce(self, endpoints: Mapping[str, str | None]) -> dict[str, Change]:
        """New announced endpoints (None: none, or nothing valid) of some nodes."""
        delta: dict[str, Change] = {}
        for node, endpoint in endpoints.items():
            if endpoint:
                self.endpoints[node] = endpoint
            else:
                self.endpoints.pop(node, None)
            peer = self.peers.get(node)
            if peer is None:
                continue
            want = endpoint or self.policy.template_endpoint(node)
            if want != peer.endpoint:
                new = replace(peer, endpoint=want)
                self.peers[node] = new
                delta[node] = (peer, new)
        return delta

    # --- internals -------------------------------------------------------------------

    def _route_hub(self) -> str | None:
        """On a spoke, the hub that carries the pools: the first live one
        (``desired.route_through_hub``); None elsewhere."""
        if not self.policy.is_spoke(self.node_id):
            return None
        return next((hub for hub in self.policy.hubs if hub in self.peers), None)

    def _route(self, delta: dict[str, Change]) -> None:
        """On a spoke, after :meth:`_place` (which gives every peer its own addresses only):
        the pools go to the first live hub, and off the hub that carried them before."""
        routes = self.pools.routes
        route = self._route_hub()
        for node in {*delta, self._routed or "", route or ""}:
            peer = self.peers.get(node)
            if peer is None:
                continue
            routed = node not in delta and node == self._routed  # placed peers carry none
            if routed == (node == route):
                continue
            ips = peer.allowed_ips + routes if node == route else peer.allowed_ips[: -len(routes)]
            new = replace(peer, allowed_ips=ips)
            self.peers[node] = new
            delta[node] = (delta[node][0] if node in delta else peer, new)
        self._routed = route
        for node in [node for node, (before, after) in delta.items() if before == after]:
            del delta[node]

    def _recount(
        self,
        table: Mapping[str, PeerRecord],
        changed: Mapping[str, PeerRecord | None],
        facts: dict[str, tuple[str | None, str | None]],
    ) -> bool:
        """Move the changed records' claims to their new records; False when any of them
        is (or was) shared with another record: then only a full recomputation is exact.
        ``facts`` receives each new record's :func:`record_facts` (for :meth:`_place`)."""
        claims = self._claims
        alone = True
        for old in changed.values():
            for claim in claims_of(old, self.pools) if old is not None else ():
                count = claims.get(claim, 0)
                if count != 1:
                    alone = False
                if count <= 1:
                    claims.pop(claim, None)
                else:
                    claims[claim] = count - 1
        pools = self.pools
        for node in changed:
            new = table.get(node)
            if new is None:
                continue
            problem, ip6 = facts[node] = record_facts(new, pools)
            if problem:
                continue
            for claim in (new.public_key, new.ipv4, ip6) if ip6 else (new.public_key, new.ipv4):
                count = claims.get(claim, 0)
                if count:
                    alone = False
                claims[claim] = count + 1
        return alone

    def _place(
        self,
        node: str,
        record: PeerRecord | None,
        delta: dict[str, Change],
        now: float | None = None,
        facts: tuple[str | None, str | None] | None = None,
    ) -> None:
        """Recompute one node's peer (its claims are unshared); ``facts``: the record's
        :func:`record_facts` when known already."""
        old = self.peers.get(node)
        self.skipped.pop(node, None)
        new = None
        if now is None:
            now = self.clock()
        if record is not None and record.expires is not None:
            self._schedule(node, record, now)
        elif self._deadline_of:  # (_schedule of a pass that never expires, inline)
            self._deadline_of.pop(node, None)
        if record is not None:
            problem, ip6 = facts or record_facts(record, self.pools)
            if problem:
                self.skipped[node] = problem
            elif record.expires is not None and self.policy.expired(record.expires, now):
                self.skipped[node] = EXPIRED
            else:
                note = ipv6_note(record, ip6, self.pools) if record.ipv6 else None
                if note:
                    self.skipped[node] = note
                new = make_peer(record, ip6, self.endpoint_of, self.policy)
        if new is None:
            self.peers.pop(node, None)
        else:
            self.peers[node] = new
        # (a new peer, all of a fill's, needs no comparison of its fields)
        if new is not old and (new is None or old is None or new != old):
            delta[node] = (old, new)


def _diff(old: Mapping[str, DesiredPeer], new: Mapping[str, DesiredPeer]) -> dict[str, Change]:
    delta: dict[str, Change] = {node: (peer, None) for node, peer in old.items() if node not in new}
    for node, peer in new.items():
        before = old.get(node)
        if before != peer:
            delta[node] = (before, peer)
    return delta
