"""From a desired state to text and to operations. Pure: no I/O.

- :func:`render_config` writes a wg-quick style file. It never holds the private
  key: a ``PostUp`` line points ``wg`` at the key file instead. :func:`render_chunks`
  yields the same text in pieces (the agent writes a large file without holding it
  whole).
- :func:`diff_peers` compares the interface's peers with the wanted ones and lists
  the few ``wg set`` operations that turn one into the other; a peer that already
  matches produces no operation, so its session is never touched.

Per-peer work is a few string checks (regular expressions first, :mod:`ipaddress`
only for shapes they do not cover): rendering 10,000 peers takes milliseconds.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

from consumers.agent.desired import IPV4_RE, Desired, DesiredPeer, is_key, parse_endpoint
from shared.validate import is_valid_node_id

HEADER = "# Written by the wgchain agent; every change is rewritten from the peers stream."
#: Peers per piece yielded by :func:`render_chunks`.
CHUNK_PEERS: Final = 256

_V4_HOST_RE: Final = re.compile(rf"({IPV4_RE.pattern})/32")
_V4_CIDR_RE: Final = re.compile(rf"{IPV4_RE.pattern}/(?:3[0-2]|[12]?[0-9])")
#: A canonical ``IPv4:port`` endpoint, as :func:`parse_endpoint` returns one.
IPV4_ENDPOINT_RE: Final = re.compile(
    rf"{IPV4_RE.pattern}:(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{{2}}|6[0-4][0-9]{{3}}"
    r"|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
)


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """A peer as the interface holds it (or should hold it)."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    keepalive: int = 0
    node_id: str = ""


@dataclass(frozen=True, slots=True)
class InterfaceState:
    """What ``wg show IF dump`` says, minus the private key."""

    public_key: str | None
    listen_port: int
    peers: dict[str, PeerSpec]
    #: Public key -> unix time of the latest handshake (0: never).
    handshakes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SetPeer:
    """``wg set IF peer KEY allowed-ips ... [endpoint E] persistent-keepalive N``."""

    public_key: str
    allowed_ips: tuple[str, ...]
    endpoint: str | None
    keepalive: int
    node_id: str = ""


@dataclass(frozen=True, slots=True)
class RemovePeer:
    """``wg set IF peer KEY remove``."""

    public_key: str
    node_id: str = ""


Op = SetPeer | RemovePeer


def normalise_ips(ips: Iterable[str]) -> tuple[str, ...]:
    """Allowed IPs as sorted canonical networks (``10.88.0.6/32``), so equal sets compare equal."""
    ips = tuple(ips)
    if len(ips) == 1 and _V4_HOST_RE.fullmatch(ips[0]):
        return ips  # one canonical /32: the common case, already normal
    return _normalised(ips)


@lru_cache(maxsize=4096)
def _normalised(ips: tuple[str, ...]) -> tuple[str, ...]:
    """:func:`normalise_ips` through :mod:`ipaddress` (remembered: a spoke's hub carries
    the pools, which every agent of a process would parse again on every change)."""
    nets = {ipaddress.ip_network(ip, strict=False) for ip in ips}
    return tuple(str(n) for n in sorted(nets, key=lambda n: (n.version, n)))


def spec_of(peer: DesiredPeer) -> PeerSpec:
    """The interface's view of a desired peer (canonical allowed IPs)."""
    return PeerSpec(
        peer.public_key,
        normalise_ips(peer.allowed_ips),
        peer.endpoint,
        peer.keepalive,
        peer.node_id,
    )


def wanted_peers(desired: Desired) -> dict[str, PeerSpec]:
    """The desired peers keyed by public key."""
    return {p.public_key: spec_of(p) for p in desired.peers}


def is_ip_endpoint(endpoint: str) -> bool:
    """Whether ``endpoint`` names an IP address (``wg`` need not resolve it)."""
    host = endpoint.rpartition(":")[0]
    if IPV4_RE.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def endpoint_matches(want: str | None, have: str | None, applied: str | None) -> bool:
    """Whether the interface's endpoint satisfies the wanted one.

    No wanted endpoint: anything goes (the peer may roam in). An IP endpoint must
    equal the interface's. A hostname cannot be compared with the resolved address
    ``wg`` shows, so it matches when it is the one this agent last applied.
    """
    if want is None:
        return True
    if is_ip_endpoint(want):
        return have is not None and parse_endpoint(have) == want
    return applied == want


def diff_peers(
    current: Mapping[str, PeerSpec],
    target: Mapping[str, PeerSpec],
    applied_endpoints: Mapping[str, str] | None = None,
) -> list[Op]:
    """Operations turning ``current`` into ``target`` (both keyed by public key).

    Removals come first (a revoked key loses access before anything else moves),
    then additions and updates, each in node id / key order.
    """
    applied_endpoints = applied_endpoints or {}
    ops: list[Op] = [
        RemovePeer(key, current[key].node_id) for key in sorted(current) if key not in target
    ]
    sets = [
        SetPeer(key, want.allowed_ips, want.endpoint, want.keepalive, want.node_id)
        for key, want in target.items()
        if not satisfied(current.get(key), want, applied_endpoints.get(key))
    ]
    return ops + sorted(sets, key=lambda op: (op.node_id, op.public_key))


def satisfied(have: PeerSpec | None, want: PeerSpec, applied: str | None) -> bool:
    """Whether the interface's peer ``have`` already is the wanted one."""
    return (
        have is not None
        and have.allowed_ips == want.allowed_ips
        and have.keepalive == want.keepalive
        and endpoint_matches(want.endpoint, have.endpoint, applied)
    )


def _safe_path(path: str) -> bool:
    return bool(path) and path.isprintable() and "\n" not in path


def render_config(
    desired: Desired,
    *,
    listen_port: int | None = None,
    private_key_file: str | None = None,
) -> str:
    """A wg-quick style file for ``desired``; peers sorted by node id, never a private key.

    Only validated values are written: a peer whose key or node id fails validation
    (it cannot, coming from :func:`desired_state`, but this is the last gate) is left out.
    """
    return "".join(
        render_chunks(desired, listen_port=listen_port, private_key_file=private_key_file)
    )


def render_chunks(
    desired: Desired,
    *,
    listen_port: int | None = None,
    private_key_file: str | None = None,
) -> Iterator[str]:
    """:func:`render_config`'s text in pieces of up to :data:`CHUNK_PEERS` peers."""
    lines = [HEADER]
    if desired.fail_closed:
        lines.append(f"# FAIL CLOSED ({desired.fail_closed}): no peers until the chain agrees.")
    lines += ["", "[Interface]"]
    lines += [f"Address = {a}" for a in desired.addresses if _is_network(a)]
    if listen_port:
        lines.append(f"ListenPort = {int(listen_port)}")
    lines.append("# PrivateKey is not stored here; it stays in its own 0600 file.")
    if private_key_file and _safe_path(private_key_file):
        lines.append(f"PostUp = wg set %i private-key {private_key_file}")
    yield "\n".join(lines)
    peers = desired.peers
    if any(peers[i].node_id > peers[i + 1].node_id for i in range(len(peers) - 1)):
        peers = tuple(sorted(peers, key=lambda p: p.node_id))
    for start in range(0, len(peers), CHUNK_PEERS):
        blocks = (_peer_block(peer) for peer in peers[start : start + CHUNK_PEERS])
        yield "".join(block for block in blocks if block is not None)
    yield "\n"


def _peer_block(peer: DesiredPeer) -> str | None:
    """The lines of one ``[Peer]`` (starting with a newline), or None when it is invalid."""
    if not (is_valid_node_id(peer.node_id) and is_key(peer.public_key)):
        return None
    allowed = ", ".join(ip for ip in peer.allowed_ips if _is_network(ip))
    text = (
        f"\n\n[Peer]\n# node {peer.node_id}\nPublicKey = {peer.public_key}\nAllowedIPs = {allowed}"
    )
    endpoint = peer.endpoint
    if endpoint and not IPV4_ENDPOINT_RE.fullmatch(endpoint):
        endpoint = parse_endpoint(endpoint)
    if endpoint:
        text += f"\nEndpoint = {endpoint}"
    if peer.keepalive:
        text += f"\nPersistentKeepalive = {int(peer.keepalive)}"
    return text


def _is_network(text: str) -> bool:
    if _V4_CIDR_RE.fullmatch(text):
        return True
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True
