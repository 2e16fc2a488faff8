"""Reading what ``wgchain nodes`` and ``wgchain diagnose`` show, from Redis and the RPC node (I/O).

``nodes``: the registry state hash (one load of the access cache: the stage's state
and position), the addresses of every node (one ``HMGET``), every host's status (the
status script, ``mode hosts``) and the current issues (two ``HGET``): O(members)
reads, no stream is ever scanned. ``diagnose`` adds the status of the whole pipeline
(one script), a walk back from the newest ``peers`` entry to the newest one about
the node (at most :data:`PEERS_WALK` entries, inside Redis) and, with ``--interface``,
the local ``wg show``.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from typing import Any, Final

import msgspec
import redis

from consumers.access.cache import RegistryCache
from consumers.access.decide import DEFAULT_GRACE, EXPIRED, decide_key, is_expired
from consumers.api.reads import Reads, address_of
from consumers.ipam.allocate import META_FIELD, NODE_FIELD
from consumers.nodes.facts import Facts, Membership, PeersEntry
from consumers.nodes.listing import Filter, NodesReport, rows, select
from consumers.nodes.tunnel import read_tunnel
from consumers.status.health import Limits
from consumers.status.model import FleetStatus
from consumers.status.snapshot import Snapshot
from shared import lua
from shared.keys import Keys
from shared.redis_log import as_str
from shared.settings import DEFAULTS
from shared.validate import is_valid_wg_key, wg_key_problem

#: Most ``peers`` entries examined looking for the newest one about a node.
PEERS_WALK: Final = 10_000
#: Node ids offered when the one asked about was never named (a typo?).
SIMILAR: Final = 3
#: Entry types of the ``peers`` stream, as :class:`PeersEntry` names them.
_KINDS: Final = {"PeerUpsert": "upsert", "PeerRemove": "remove", "AllocationPending": "pending"}

_WALK_LUA: Final = lua.source("nodes_walk")


def nodes_report(
    client: redis.Redis,
    keys: Keys,
    wanted: Filter,
    reconcile_interval: float,
    expiry_grace: float = DEFAULT_GRACE,
) -> NodesReport:
    """Every node, filtered, with the current issues (see the module docstring)."""
    snapshot = Snapshot(client, keys)
    cache = RegistryCache(client, keys)
    try:
        reads = Reads(client, keys, cache, expiry_grace=expiry_grace)
        summaries, position = reads.summaries()
    finally:
        cache.close()
    hosts = snapshot.hosts(cap=1)
    now = time.time()
    found = rows(summaries, hosts, now, reconcile_interval)
    shown, issues = select(found, snapshot.issues(), wanted)
    return NodesReport(
        network=keys.tag,
        generated_at=now,
        position=position,
        nodes=shown,
        issues=issues,
        total=len(found),
    )


def node_facts(
    client: redis.Redis,
    keys: Keys,
    node: str,
    fleet: FleetStatus,
    *,
    limits: Limits,
    topology: str = DEFAULTS.topology,
    hubs: Sequence[str] = (),
    endpoint_template: str = "",
    interface: str | None = None,
) -> Facts:
    """What ``diagnose`` looks at for ``node``, with ``fleet`` (the pipeline's status, from
    ``Snapshot.fleet`` with the same ``limits``: listener, stages, hosts, issues, problems);
    see the module docstring."""
    membership = _membership(client, keys, node, limits.expiry_grace)
    entry = _peers_entry(client, keys, node)
    tunnel = None
    if interface is not None:
        own = next((h for h in fleet.hosts if h.node == node), None)
        wanted = {k for k in (membership.public_key, own.public_key if own else "") if k}
        tunnel = read_tunnel(interface, {k for k in wanted if is_valid_wg_key(k)})
    return Facts(
        node=node,
        network=keys.tag,
        now=time.time(),
        has_data=fleet.has_data,
        membership=membership,
        issues=[i for i in fleet.issues if i.node == node],
        listener=fleet.listener,
        stages=fleet.stages,
        problems=fleet.problems,
        peers_head=fleet.peers_head,
        entry=entry,
        hosts=fleet.hosts,
        reconcile_interval=limits.reconcile_interval,
        topology=topology,
        hubs=list(hubs),
        endpoint_template=endpoint_template,
        tunnel=tunnel,
    )


def _membership(
    client: redis.Redis, keys: Keys, node: str, expiry_grace: float = DEFAULT_GRACE
) -> Membership:
    """The node in the registry (the access cache's load) and its published address."""
    cache = RegistryCache(client, keys)
    try:
        with cache.fresh() as view:
            found = Membership(known=view.known(node))
            if not found.known:
                found.similar = difflib.get_close_matches(node, view.nodes(), n=SIMILAR)
                return found
            tokens = view.state.tokens
            found.tokens = sorted(view.named.get(node, ()))
            found.active_tokens = [t for t in found.tokens if tokens[t].active]
            status = view.status(node)
            if status is None:
                return found
            found.member, found.live, found.reason = True, status.live, status.reason
            found.token_id, found.owner = status.token_id, status.owner or None
            record = tokens.get(status.token_id)
            found.expires = record.expires if record is not None else None
            if found.live and is_expired(found.expires, time.time(), expiry_grace):
                found.live, found.reason = False, EXPIRED  # judged now (docs/design.md §5)
            found.public_key = status.public_key
            found.key_problem = wg_key_problem(status.public_key) if status.public_key else None
            if is_valid_wg_key(status.public_key):
                found.detail = decide_key(view, node, status.public_key).detail
    finally:
        cache.close()
    raw: Any = client.hmget(keys.state("ipam"), [META_FIELD, NODE_FIELD + node])
    try:
        published = address_of(raw[0], raw[1])
    except (msgspec.DecodeError, ValueError):  # not ipam's: said as not published
        published = None
    if published is not None:
        found.published = True
        found.ipv4, found.ipv6, key = published
        found.published_key = key or None
    return found


def _peers_entry(client: redis.Redis, keys: Keys, node: str) -> PeersEntry:
    """The newest ``peers`` entry about ``node``, walking back at most :data:`PEERS_WALK`."""
    needle = msgspec.json.encode({"node_id": node}).decode()[1:-1]  # "node_id":"<node>"
    raw: Any = client.eval(_WALK_LUA, 1, keys.peers, needle, PEERS_WALK)  # type: ignore[no-untyped-call]
    found, kind, examined, oldest = raw
    return PeersEntry(
        id=as_str(found) if found else None,
        kind=_KINDS.get(as_str(kind), as_str(kind)) if kind else "",
        examined=int(examined),
        oldest=as_str(oldest) if oldest else None,
    )


__all__ = ["PEERS_WALK", "node_facts", "nodes_report"]
