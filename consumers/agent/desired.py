"""What one host's WireGuard interface should look like. Pure: no I/O.

Two steps: :class:`~consumers.agent.table.PeerTable` folds the ``peers`` stream into
node -> (key, addresses) (``table.py``); :func:`desired_state` turns the
table, the host's own public key and the hosts' endpoint announcements into the
peer set of one node (docs/design.md §9). It fails closed, with a reason, when the node is
not a live member or the chain's key is not the host's own key.

Topologies: ``mesh`` peers every member with every other, each with its /32 (and
/128). ``hub`` peers hubs with everyone and spokes with the hubs only; on a spoke
the first live hub also carries the whole pool, so spoke-to-spoke traffic goes
through that hub (which must forward it: ``net.ipv4.ip_forward=1``).

Every string is validated again here (node ids, keys, addresses, endpoints) even
though upstream stages validated it: nothing unchecked reaches a file or argv.
The checks are cheap (a regular expression, then :mod:`ipaddress` only for the
rare shapes it does not cover), so nothing is memoised; the strings a table keeps
are interned, so agents sharing a process share them (the fleet benchmark runs
hundreds of agents per process). :mod:`consumers.agent.peerset` keeps the result
of :func:`desired_state` up to date change by change.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from socket import inet_aton
from typing import Final

from consumers.agent.table import (
    IPV4_RE,
    PeerRecord,
    PeerTable,
    address,
    is_key,
    share,
    share_strings,
)
from shared import reasons, settings
from shared.validate import is_valid_node_id

#: Topologies a policy may name (``shared/settings.py``).
TOPOLOGIES: Final = settings.TOPOLOGIES
#: Longest host announcement (JSON) that is parsed at all (bytes).
MAX_ANNOUNCEMENT_BYTES: Final = 1024

#: Fail-closed reasons: the project's vocabulary (``shared/reasons.py``, the README's table), our
#: own constants (safe to log and to render as a comment). The peers stream has no entry for the
#: node: it is not live (``wgchain diagnose NODE`` says why; the host cannot know).
NOT_LIVE: Final = reasons.NOT_LIVE
KEY_MISMATCH: Final = reasons.KEY_MISMATCH
NO_OWN_KEY: Final = reasons.NO_OWN_KEY
ADDRESS_OUTSIDE_POOL: Final = reasons.OWN_ADDRESS_OUTSIDE_POOL
BAD_NODE_ID: Final = reasons.INVALID_OWN_NODE_ID
#: The host's own pass has expired (and, as a skip reason, a member's pass has).
EXPIRED: Final = reasons.EXPIRED
#: Default seconds past an expiration before a pass counts as expired (``WGCHAIN_EXPIRY_GRACE``).
DEFAULT_EXPIRY_GRACE: Final = settings.DEFAULT_EXPIRY_GRACE

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE: Final = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_PORT_RE: Final = re.compile(r"[0-9]{1,5}")


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
    if IPV4_RE.fullmatch(host):
        return f"{host}:{int(port)}"
    try:
        addr4 = ipaddress.IPv4Address(host)
    except ValueError:
        if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
            return None
        return f"{host.lower()}:{int(port)}"
    return f"{addr4}:{int(port)}"


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
    checked = parse_endpoint(endpoint) if isinstance(endpoint, str) else None
    return share(checked) if checked else None


@dataclass(frozen=True, slots=True)
class Policy:
    """The network-wide rules that shape every host's peers (built :meth:`from_settings`;
    the rules of each value are the settings layer's, ``shared/settings.py``)."""

    pool: str = settings.DEFAULT_POOL
    pool6: str = ""
    #: Endpoint of a host that announced none; ``{node}`` is replaced by its node id.
    endpoint_template: str = ""
    #: PersistentKeepalive (seconds, 0 for off).
    keepalive: int = settings.DEFAULT_KEEPALIVE
    topology: str = "mesh"
    #: Hub node ids for ``topology = "hub"``, in order of preference: a spoke routes the
    #: whole pool through the first of them that is a live member.
    hubs: tuple[str, ...] = ()
    #: Seconds past a pass's expiration before it counts as expired (clock skew between
    #: the chain and the hosts; ``WGCHAIN_EXPIRY_GRACE``).
    expiry_grace: float = settings.DEFAULT_EXPIRY_GRACE

    def __post_init__(self) -> None:
        settings.check(
            [
                *settings.pool_problems(self.pool, self.pool6),
                *settings.topology_problems(self.topology, self.hubs),
                ("keepalive", settings.keepalive_problem(self.keepalive)),
                ("expiry_grace", settings.expiry_grace_problem(self.expiry_grace)),
            ]
        )

    @classmethod
    def from_settings(cls, cfg: settings.Settings) -> Policy:
        """The policy ``cfg`` sets (already checked by the settings layer)."""
        return cls(
            pool=cfg.pool,
            pool6=cfg.pool6,
            endpoint_template=cfg.endpoint_template,
            keepalive=cfg.keepalive,
            topology=cfg.topology,
            hubs=tuple(cfg.hub_list),
            expiry_grace=cfg.expiry_grace,
        )

    def template_endpoint(self, node_id: str) -> str | None:
        """The templated endpoint of ``node_id`` (validated), or None."""
        if not self.endpoint_template:
            return None
        return parse_endpoint(self.endpoint_template.replace("{node}", node_id))

    def is_spoke(self, node_id: str) -> bool:
        """Whether ``node_id`` peers with the hubs only (and so needs no other record)."""
        return self.topology == "hub" and node_id not in self.hubs

    def deadline(self, expires: int | None) -> float | None:
        """Unix time from which a pass that expires at ``expires`` counts as expired
        (None: it never expires)."""
        return None if expires is None else expires + self.expiry_grace

    def expired(self, expires: int | None, now: float | None) -> bool:
        """Whether a pass that expires at ``expires`` has expired at ``now`` (None: time is
        not judged; docs/design.md §5)."""
        return expires is not None and now is not None and now >= expires + self.expiry_grace

    def needed(self, node_id: str) -> frozenset[str] | None:
        """The nodes whose records ``node_id``'s peers depend on (None: every node)."""
        return frozenset((node_id, *self.hubs)) if self.is_spoke(node_id) else None


@dataclass(frozen=True, slots=True)
class DesiredPeer:
    """One ``[Peer]``: everything ``wg set IF peer KEY ...`` needs."""

    node_id: str
    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None
    keepalive: int
    #: Unix time the member's pass expires (None: never): the agent removes the peer then,
    #: by its own clock, even while Redis is unreachable.
    expires: int | None = None


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


#: A node's endpoint from the announcements (None: it announced none, or nothing valid).
EndpointOf = Callable[[str], "str | None"]


def desired_state(
    table: Mapping[str, PeerRecord],
    node_id: str,
    own_public_key: str | None,
    announcements: Mapping[str, bytes | str],
    policy: Policy,
    *,
    now: float | None = None,
) -> Desired:
    """The interface ``node_id`` should have; no peers (fail closed) unless it is a live member
    whose key on chain is ``own_public_key`` and whose pass has not expired at ``now`` (unix
    time; None: expirations are not judged)."""

    def endpoint_of(node: str) -> str | None:
        raw = announcements.get(node)
        return announced_endpoint(raw) if raw is not None else None

    return compute(table, node_id, own_public_key, endpoint_of, policy, now=now)


@dataclass(frozen=True, slots=True)
class Pools:
    """The policy's pools, parsed once: IPv4 as (network, mask) integers."""

    net4: int
    mask4: int
    prefix4: int
    pool6: ipaddress.IPv6Network | None
    #: The pools as allowed IPs of the hub a spoke routes through.
    routes: tuple[str, ...]


@lru_cache(maxsize=16)
def pools_of(pool: str, pool6: str) -> Pools:
    net = ipaddress.IPv4Network(pool)
    net6 = ipaddress.IPv6Network(pool6) if pool6 else None
    routes = (str(net),) + ((str(net6),) if net6 is not None else ())
    return Pools(int(net.network_address), int(net.netmask), net.prefixlen, net6, routes)


def _in_pool4(ip: str, pools: Pools) -> bool:
    """Whether ``ip``, a canonical dotted quad (``IPV4_RE``, checked by every caller
    first), is in the IPv4 pool (``inet_aton`` reads such a quad as ``ipaddress`` does,
    at a third of the cost of splitting it: a fill judges thousands)."""
    return int.from_bytes(inet_aton(ip), "big") & pools.mask4 == pools.net4


def own_facts(
    table: Mapping[str, PeerRecord],
    node_id: str,
    own_public_key: str | None,
    policy: Policy,
    now: float | None = None,
) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """(fail-closed reason or None, the node's addresses, the keys and IPs it claims)."""
    if not is_valid_node_id(node_id):
        return BAD_NODE_ID, (), ()
    if own_public_key is None or not is_key(own_public_key):
        return NO_OWN_KEY, (), ()
    own = table.get(node_id)
    if own is None:
        return NOT_LIVE, (), ()
    if own.public_key != own_public_key:
        return KEY_MISMATCH, (), ()
    if policy.expired(own.expires, now):
        return EXPIRED, (), ()
    pools = pools_of(policy.pool, policy.pool6)
    own4 = address(own.ipv4, 4)
    if own4 is None or not _in_pool4(own4, pools):
        return ADDRESS_OUTSIDE_POOL, (), ()
    addresses = [f"{own4}/{pools.prefix4}"]
    own6 = address(own.ipv6, 6) if own.ipv6 else None
    if pools.pool6 is not None and own6 and ipaddress.IPv6Address(own6) in pools.pool6:
        addresses.append(f"{own6}/{pools.pool6.prefixlen}")
    claims = (own_public_key, own4) + ((own6,) if own6 else ())
    return None, tuple(addresses), claims


def record_facts(record: PeerRecord, pools: Pools) -> tuple[str | None, str | None]:
    """What a record alone says: why it cannot be a peer (or None), and its IPv6 address
    when that is valid and inside the IPv6 pool (or None)."""
    if not is_valid_node_id(record.node_id) or not is_key(record.public_key):
        return "invalid node id or key", None
    ipv4 = record.ipv4
    if not IPV4_RE.fullmatch(ipv4) or not _in_pool4(ipv4, pools):
        return "ipv4 outside the pool", None
    ip6 = address(record.ipv6, 6) if record.ipv6 else None
    if pools.pool6 is None or ip6 is None or ipaddress.IPv6Address(ip6) not in pools.pool6:
        return None, None
    return None, ip6


def claims_of(record: PeerRecord, pools: Pools) -> tuple[str, ...]:
    """The keys and addresses a record claims when it is a peer (none when it cannot be)."""
    problem, ip6 = record_facts(record, pools)
    if problem:
        return ()
    return (record.public_key, record.ipv4) + ((ip6,) if ip6 else ())


def make_peer(
    record: PeerRecord, ip6: str | None, endpoint_of: EndpointOf, policy: Policy
) -> DesiredPeer:
    """The peer of a record that takes its addresses (``ip6``: its /128, if it gets one)."""
    allowed: tuple[str, ...] = (share(f"{record.ipv4}/32"),)
    if ip6:
        allowed += (share(f"{ip6}/128"),)
    node = record.node_id
    endpoint = endpoint_of(node)
    if not endpoint:  # (no call when there is no template: a fill makes thousands)
        endpoint = policy.template_endpoint(node) if policy.endpoint_template else None
    return DesiredPeer(node, record.public_key, allowed, endpoint, policy.keepalive, record.expires)


def compute(
    table: Mapping[str, PeerRecord],
    node_id: str,
    own_public_key: str | None,
    endpoint_of: EndpointOf,
    policy: Policy,
    *,
    counts: dict[str, int] | None = None,
    now: float | None = None,
) -> Desired:
    """:func:`desired_state` with the announcements as a lookup of validated endpoints.

    ``counts``, if given, receives how many times each key and address is claimed by
    the node itself and by the records that could be peers (see ``peerset.py``). A
    record whose pass has expired at ``now`` still claims its key and addresses (it
    keeps its address upstream), but gets no peer: whether a pass has expired never
    changes which records clash, so ``peerset.py`` can judge it record by record.
    """
    fail_closed, addresses, claims = own_facts(table, node_id, own_public_key, policy, now)
    if fail_closed:
        return Desired("" if fail_closed == BAD_NODE_ID else node_id, fail_closed=fail_closed)
    pools = pools_of(policy.pool, policy.pool6)
    peers: list[DesiredPeer] = []
    skipped: list[tuple[str, str]] = []
    used = set(claims)  # keys and addresses (never equal to each other) already taken
    if counts is not None:
        for claim in claims:
            counts[claim] = counts.get(claim, 0) + 1
    for other in sorted(table):
        record = table[other]
        if other == node_id or not _selected(policy, node_id, other):
            continue
        problem, ip6 = record_facts(record, pools)
        if counts is not None and not problem:
            for claim in (record.public_key, record.ipv4, ip6 or ""):
                if claim:
                    counts[claim] = counts.get(claim, 0) + 1
        problem = problem or _clash(record, used)
        if problem:
            skipped.append((other, problem))
            continue
        if pools.pool6 is not None and record.ipv6 and address(record.ipv6, 6):
            if ip6 and ip6 not in used:
                used.add(ip6)
            else:
                ip6 = None
                skipped.append((other, "ipv6 outside pool or taken (ipv4 only)"))
        used.add(record.public_key)
        used.add(record.ipv4)
        if policy.expired(record.expires, now):  # the one reason given for it
            if skipped and skipped[-1][0] == other:
                skipped.pop()
            skipped.append((other, EXPIRED))
            continue
        peers.append(make_peer(record, ip6, endpoint_of, policy))
    if policy.is_spoke(node_id):
        peers = route_through_hub(peers, policy, pools)
    return Desired(node_id, addresses, tuple(peers), None, tuple(skipped))


def ipv6_note(record: PeerRecord, ip6: str | None, pools: Pools) -> str | None:
    """Why a peer gets no /128 although it names an IPv6 address (None: no such reason)."""
    if pools.pool6 is not None and record.ipv6 and address(record.ipv6, 6) and not ip6:
        return "ipv6 outside pool or taken (ipv4 only)"
    return None


def _selected(policy: Policy, node_id: str, other: str) -> bool:
    """Whether ``node_id`` peers with ``other`` under the policy's topology."""
    if policy.topology == "mesh":
        return True
    return node_id in policy.hubs or other in policy.hubs


def route_through_hub(peers: list[DesiredPeer], policy: Policy, pools: Pools) -> list[DesiredPeer]:
    """A spoke's peers with the whole pool routed to its first live hub.

    WireGuard gives a prefix to one peer only, so one hub carries the pool (and the
    IPv6 pool); the others keep their own addresses. Traffic to another spoke then
    goes to that hub, which forwards it when routing is enabled on it.
    """
    present = {p.node_id for p in peers}
    route = next((h for h in policy.hubs if h in present), None)
    return [
        replace(p, allowed_ips=p.allowed_ips + pools.routes) if p.node_id == route else p
        for p in peers
    ]


def _clash(record: PeerRecord, used: set[str]) -> str | None:
    """Why a valid record clashes with the peers already chosen (or None)."""
    if record.public_key in used:
        return "key already used by another node"
    if record.ipv4 in used:
        return "ipv4 already used by another node"
    return None


__all__ = [
    "IPV4_RE",
    "Desired",
    "DesiredPeer",
    "PeerRecord",
    "PeerTable",
    "Policy",
    "address",
    "announced_endpoint",
    "desired_state",
    "is_key",
    "parse_endpoint",
    "share_strings",
]
