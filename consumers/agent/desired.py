"""What one host's WireGuard interface should look like. Pure: no I/O.

Two steps: :class:`PeerTable` folds the ``peers`` stream (PeerUpsert, PeerRemove,
AllocationPending) into node -> (key, addresses); :func:`desired_state` turns the
table, the host's own public key and the hosts' endpoint announcements into the
peer set of one node (DESIGN §4). It fails closed, with a reason, when the node is
not a live member or the chain's key is not the host's own key.

Topologies: ``mesh`` peers every member with every other, each with its /32 (and
/128). ``hub`` peers hubs with everyone and spokes with the hubs only; on a spoke
the first live hub also carries the whole pool, so spoke-to-spoke traffic goes
through that hub (which must forward it: ``net.ipv4.ip_forward=1``).

Every string is validated again here (node ids, keys, addresses, endpoints) even
though upstream stages validated it: nothing unchecked reaches a file or argv.
The checks are pure functions of their input, so their results are memoised
(bounded caches): a reconcile of 10,000 members re-checks only what changed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Final

from shared.events import AllocationPending, PeerRemove, PeerUpsert
from shared.validate import excerpt, is_valid_node_id, is_valid_wg_key

#: Topologies a policy may name: everyone with everyone, or spokes with hubs only.
TOPOLOGIES: Final = ("mesh", "hub")
#: Longest host announcement (JSON) that is parsed at all (bytes).
MAX_ANNOUNCEMENT_BYTES: Final = 1024
#: Entries each memoised check keeps (a few times the largest network expected).
CACHE_SIZE: Final = 1 << 17

#: Fail-closed reasons (our own constants: safe to log and to render as a comment).
NOT_A_MEMBER: Final = "not-a-member"
KEY_MISMATCH: Final = "key-mismatch"
NO_OWN_KEY: Final = "no-own-key"
ADDRESS_OUTSIDE_POOL: Final = "own-address-outside-pool"
BAD_NODE_ID: Final = "invalid-own-node-id"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """One live member with its address, as the ``peers`` stream last said."""

    node_id: str
    public_key: str
    ipv4: str
    ipv6: str | None = None


class PeerTable:
    """node id -> :class:`PeerRecord`, folded from ``peers`` entries in stream order."""

    def __init__(self) -> None:
        self.records: dict[str, PeerRecord] = {}

    def apply(self, entry: object) -> str | None:
        """Fold one entry; returns why it was ignored (safe to log), or None."""
        if isinstance(entry, PeerUpsert):
            if not is_valid_node_id(entry.node_id):
                return f"invalid node id {excerpt(entry.node_id)}"
            if not is_valid_wg_key(entry.public_key):
                self.records.pop(entry.node_id, None)
                return f"node {entry.node_id}: invalid key {excerpt(entry.public_key)}"
            ipv4 = _address(entry.ipv4, 4)
            ipv6 = _address(entry.ipv6, 6) if entry.ipv6 else None
            if ipv4 is None:
                self.records.pop(entry.node_id, None)
                return f"node {entry.node_id}: invalid ipv4 {excerpt(entry.ipv4)}"
            self.records[entry.node_id] = PeerRecord(entry.node_id, entry.public_key, ipv4, ipv6)
            return None
        if isinstance(entry, PeerRemove | AllocationPending):
            # A node without an address cannot be a peer, whatever it was before.
            self.records.pop(entry.node_id, None)
            return None
        return f"not a peers entry: {type(entry).__name__}"


@lru_cache(maxsize=CACHE_SIZE)
def _address(text: str | None, version: int) -> str | None:
    """The bare address in ``text`` ("10.88.0.5" or "10.88.0.5/32"), or None if invalid."""
    if text is None or len(text) > 64:
        return None
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        return None
    if iface.version != version:
        return None
    return str(iface.ip)


@lru_cache(maxsize=CACHE_SIZE)
def parse_endpoint(text: str) -> str | None:
    """``text`` normalised as ``host:port`` or ``[v6]:port``, or None if it is not one."""
    if not text or len(text) > 260 or not text.isascii() or not text.isprintable():
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT_RE.fullmatch(port) or not 1 <= int(port) <= 65535:
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            addr6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
        return f"[{addr6}]:{int(port)}"
    try:
        addr4 = ipaddress.IPv4Address(host)
    except ValueError:
        if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
            return None
        return f"{host.lower()}:{int(port)}"
    return f"{addr4}:{int(port)}"


@lru_cache(maxsize=CACHE_SIZE)
def announced_endpoint(raw: bytes | str) -> str | None:
    """The endpoint in a host announcement (JSON ``{"endpoint": ...}``), or None if hostile."""
    if len(raw) > MAX_ANNOUNCEMENT_BYTES:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    endpoint = doc.get("endpoint")
    return parse_endpoint(endpoint) if isinstance(endpoint, str) else None


@dataclass(frozen=True, slots=True)
class Policy:
    """The network-wide rules that shape every host's peers."""

    pool: str = "10.88.0.0/16"
    pool6: str = ""
    #: Endpoint of a host that announced none; ``{node}`` is replaced by its node id.
    endpoint_template: str = ""
    #: PersistentKeepalive (seconds, 0 for off).
    keepalive: int = 25
    topology: str = "mesh"
    #: Hub node ids for ``topology = "hub"``, in order of preference: a spoke routes the
    #: whole pool through the first of them that is a live member.
    hubs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {self.topology!r} (one of {TOPOLOGIES})")
        if self.topology == "hub" and not self.hubs:
            raise ValueError("topology 'hub' needs at least one hub node id")
        bad = [h for h in self.hubs if not is_valid_node_id(h)]
        if bad:
            raise ValueError(f"invalid hub node id {excerpt(bad[0])}")
        if self.keepalive < 0 or self.keepalive > 65535:
            raise ValueError("keepalive must be 0..65535 seconds")
        ipaddress.IPv4Network(self.pool)
        if self.pool6:
            ipaddress.IPv6Network(self.pool6)

    def template_endpoint(self, node_id: str) -> str | None:
        """The templated endpoint of ``node_id`` (validated), or None."""
        if not self.endpoint_template:
            return None
        return parse_endpoint(self.endpoint_template.replace("{node}", node_id))


@dataclass(frozen=True, slots=True)
class DesiredPeer:
    """One ``[Peer]``: everything ``wg set IF peer KEY ...`` needs."""

    node_id: str
    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None
    keepalive: int


@dataclass(frozen=True, slots=True)
class Desired:
    """The interface of one node: its addresses and peers (sorted by node id)."""

    node_id: str
    addresses: tuple[str, ...] = ()
    peers: tuple[DesiredPeer, ...] = ()
    #: Why the node has no peers at all (None: not failed closed).
    fail_closed: str | None = None
    #: (node id, reason) of members left out (bad address, duplicate key...).
    skipped: tuple[tuple[str, str], ...] = ()


def desired_state(
    table: Mapping[str, PeerRecord],
    node_id: str,
    own_public_key: str | None,
    announcements: Mapping[str, bytes | str],
    policy: Policy,
) -> Desired:
    """The interface ``node_id`` should have; no peers (fail closed) unless it is a live member
    whose key on chain is ``own_public_key``."""
    if not is_valid_node_id(node_id):
        return Desired(node_id="", fail_closed=BAD_NODE_ID)
    if own_public_key is None or not is_valid_wg_key(own_public_key):
        return Desired(node_id, fail_closed=NO_OWN_KEY)
    own = table.get(node_id)
    if own is None:
        return Desired(node_id, fail_closed=NOT_A_MEMBER)
    if own.public_key != own_public_key:
        return Desired(node_id, fail_closed=KEY_MISMATCH)
    pool = ipaddress.IPv4Network(policy.pool)
    pool6 = ipaddress.IPv6Network(policy.pool6) if policy.pool6 else None
    own4 = _address(own.ipv4, 4)
    if own4 is None or ipaddress.IPv4Address(own4) not in pool:
        return Desired(node_id, fail_closed=ADDRESS_OUTSIDE_POOL)
    addresses = [f"{own4}/{pool.prefixlen}"]
    own6 = _address(own.ipv6, 6) if own.ipv6 else None
    if pool6 is not None and own6 and ipaddress.IPv6Address(own6) in pool6:
        addresses.append(f"{own6}/{pool6.prefixlen}")

    peers: list[DesiredPeer] = []
    skipped: list[tuple[str, str]] = []
    used_keys = {own_public_key}
    used_ips = {own4} | ({own6} if own6 else set())
    for other in sorted(table):
        record = table[other]
        if other == node_id or not _selected(policy, node_id, other):
            continue
        problem, ip6 = _record_facts(_fields(record), policy.pool, policy.pool6)
        problem = problem or _clash(record, used_keys, used_ips)
        if problem:
            skipped.append((other, problem))
            continue
        allowed = [f"{record.ipv4}/32"]
        if pool6 is not None and record.ipv6 and _address(record.ipv6, 6):
            if ip6 and ip6 not in used_ips:
                allowed.append(f"{ip6}/128")
                used_ips.add(ip6)
            else:
                skipped.append((other, "ipv6 outside pool or taken (ipv4 only)"))
        used_keys.add(record.public_key)
        used_ips.add(record.ipv4)
        endpoint = None
        if other in announcements:
            endpoint = announced_endpoint(announcements[other])
        if endpoint is None:
            endpoint = policy.template_endpoint(other)
        peers.append(
            DesiredPeer(other, record.public_key, tuple(allowed), endpoint, policy.keepalive)
        )
    if policy.topology == "hub" and node_id not in policy.hubs:
        peers = _route_through_hub(peers, policy, pool, pool6)
    return Desired(node_id, tuple(addresses), tuple(peers), None, tuple(skipped))


def _selected(policy: Policy, node_id: str, other: str) -> bool:
    """Whether ``node_id`` peers with ``other`` under the policy's topology."""
    if policy.topology == "mesh":
        return True
    return node_id in policy.hubs or other in policy.hubs


def _route_through_hub(
    peers: list[DesiredPeer],
    policy: Policy,
    pool: ipaddress.IPv4Network,
    pool6: ipaddress.IPv6Network | None,
) -> list[DesiredPeer]:
    """A spoke's peers with the whole pool routed to its first live hub.

    WireGuard gives a prefix to one peer only, so one hub carries the pool (and the
    IPv6 pool); the others keep their own addresses. Traffic to another spoke then
    goes to that hub, which forwards it when routing is enabled on it.
    """
    present = {p.node_id for p in peers}
    route = next((h for h in policy.hubs if h in present), None)
    pools = (str(pool),) + ((str(pool6),) if pool6 is not None else ())
    return [
        replace(p, allowed_ips=p.allowed_ips + pools) if p.node_id == route else p for p in peers
    ]


def _fields(record: PeerRecord) -> tuple[str, str, str, str | None]:
    return record.node_id, record.public_key, record.ipv4, record.ipv6


@lru_cache(maxsize=CACHE_SIZE)
def _record_facts(
    fields: tuple[str, str, str, str | None], pool: str, pool6: str
) -> tuple[str | None, str | None]:
    """What a record (its :func:`_fields`) alone says: why it cannot be a peer (or None),
    and its IPv6 address when that is valid and inside ``pool6`` (or None). Keyed by
    strings, which hash and compare cheaply."""
    node_id, public_key, ipv4, ipv6 = fields
    if not is_valid_node_id(node_id) or not is_valid_wg_key(public_key):
        return "invalid node id or key", None
    ip4 = _address(ipv4, 4)
    if ip4 != ipv4 or ipaddress.IPv4Address(ip4) not in ipaddress.IPv4Network(pool):
        return "ipv4 outside the pool", None
    ip6 = _address(ipv6, 6) if ipv6 else None
    if not pool6 or ip6 is None or ipaddress.IPv6Address(ip6) not in ipaddress.IPv6Network(pool6):
        return None, None
    return None, ip6


def _clash(record: PeerRecord, used_keys: set[str], used_ips: set[str]) -> str | None:
    """Why a valid record clashes with the peers already chosen (or None)."""
    if record.public_key in used_keys:
        return "key already used by another node"
    if record.ipv4 in used_ips:
        return "ipv4 already used by another node"
    return None
