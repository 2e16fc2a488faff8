"""From a desired state to text and to operations. Pure: no I/O.

- :func:`render_config` writes a wg-quick style file. It never holds the private
  key: a ``PostUp`` line points ``wg`` at the key file instead. :func:`render_chunks`
  yields the same text in pieces. The agent writes the same bytes from
  :func:`render_head` and a :class:`PeerBlocks`, which keeps each peer's ``[Peer]``
  block between two writes of the file, so a rewrite renders only the peers that
  changed since the one before (docs/design.md §11.4).
- :func:`diff_peers` compares the interface's peers with the wanted ones and lists
  the few ``wg set`` operations that turn one into the other; a peer that already
  matches produces no operation, so its session is never touched.

Per-peer work is a few string checks (regular expressions first, :mod:`ipaddress`
only for shapes they do not cover), some 1.5 µs a peer: 15 ms for 10,000 peers, which a
process of 125 mesh agents would spend per agent on every change without
:class:`PeerBlocks`.
"""

from __future__ import annotations

import ipaddress
import operator
import re
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import compress, count
from typing import Final

from consumers.agent.desired import IPV4_RE, Desired, DesiredPeer, is_key, parse_endpoint
from shared.validate import is_valid_node_id

HEADER = "# Written by the wgchain agent; every change is rewritten from the peers stream."
#: Peers per piece yielded by :func:`render_chunks` and :meth:`PeerBlocks.pieces`.
CHUNK_PEERS: Final = 256
#: Entries of the process's shared ``[Peer]`` blocks (:func:`peer_block`) at or above which
#: the blocks no agent holds any more are dropped (the bound then doubles what is left).
SHARED_BLOCKS_MIN: Final = 4096

_V4_HOST_RE: Final = re.compile(rf"({IPV4_RE.pattern})/32")
#: One canonical IPv4 host network (``10.88.0.6/32``): as :func:`normalise_ips` leaves it.
V4_HOST_RE: Final = _V4_HOST_RE
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
    yield render_head(
        desired.addresses,
        desired.fail_closed,
        listen_port=listen_port,
        private_key_file=private_key_file,
    )
    peers = desired.peers
    if any(peers[i].node_id > peers[i + 1].node_id for i in range(len(peers) - 1)):
        peers = tuple(sorted(peers, key=lambda p: p.node_id))
    for start in range(0, len(peers), CHUNK_PEERS):
        blocks = (_peer_block(peer) for peer in peers[start : start + CHUNK_PEERS])
        yield "".join(block for block in blocks if block is not None)
    yield "\n"


def render_head(
    addresses: Iterable[str],
    fail_closed: str | None,
    *,
    listen_port: int | None = None,
    private_key_file: str | None = None,
) -> str:
    """The file's text before its first ``[Peer]``: the ``[Interface]`` section (only
    valid addresses, never a private key)."""
    lines = [HEADER]
    if fail_closed:
        lines.append(f"# FAIL CLOSED ({fail_closed}): no peers until the chain agrees.")
    lines += ["", "[Interface]"]
    lines += [f"Address = {a}" for a in addresses if _is_network(a)]
    if listen_port:
        lines.append(f"ListenPort = {int(listen_port)}")
    lines.append("# PrivateKey is not stored here; it stays in its own 0600 file.")
    if private_key_file and _safe_path(private_key_file):
        lines.append(f"PostUp = wg set %i private-key {private_key_file}")
    return "\n".join(lines)


class PeerBlocks:
    """The ``[Peer]`` blocks of one config file in node order, kept from one write of the
    file to the next: :meth:`update` renders only the peers that are not, as objects, the
    ones of the write before (a change of k peers renders k blocks, not the 10,000 of a
    mesh host). Not thread-safe: one file's writes take turns (``files.Writer``).

    What it keeps is a function of the peers it was given last (each block is
    :func:`peer_block` of the peer beside it), so the file always equals
    :func:`render_config` of the peers written, whatever happened in between. The
    bytes of a block are shared by every agent of the process that holds that peer
    (:func:`peer_block`): an agent keeps two lists of pointers (some 160 KB at
    10,000 peers), not a copy of the text. Used across writes only once a process runs
    several agents (:func:`keep_blocks`)."""

    __slots__ = ("_blocks", "_peers")

    def __init__(self) -> None:
        #: The peers of the last :meth:`update` in node order, and the block of each.
        self._peers: list[DesiredPeer] = []
        self._blocks: list[bytes] = []

    def update(self, peers: Mapping[str, DesiredPeer]) -> int:
        """Take ``peers`` (node id -> peer) as the file's peers; returns how many blocks
        were rendered or looked up (those of peers new or changed since the last call)."""
        before, blocks = self._peers, self._blocks
        have = list(map(peers.get, map(_NODE_ID, before)))
        changed = list(compress(count(), map(operator.is_not, have, before)))
        if len(before) != len(peers) or any(have[i] is None for i in changed):
            # a peer came or went: the order is made again, what stays keeps its block
            old_blocks = dict(zip(map(_NODE_ID, before), blocks, strict=True))
            old_peers = dict(zip(map(_NODE_ID, before), before, strict=True))
            nodes = sorted(peers)
            have = list(map(peers.__getitem__, nodes))
            before = list(map(old_peers.get, nodes))  # type: ignore[arg-type]
            blocks = list(map(old_blocks.get, nodes))  # type: ignore[arg-type]
            changed = list(compress(count(), map(operator.is_not, have, before)))
        # (every one of ``have`` is a peer by now; if this fails, nothing was kept)
        fresh = [peer_block(have[i]) for i in changed]  # type: ignore[arg-type]
        for i, block in zip(changed, fresh, strict=True):
            blocks[i] = block
        self._peers, self._blocks = have, blocks  # type: ignore[assignment]
        return len(changed)

    def pieces(self, head: str) -> list[bytes]:
        """The file's bytes: ``head`` (:func:`render_head`), the blocks, the last newline;
        in pieces of :data:`CHUNK_PEERS` blocks."""
        blocks = self._blocks
        out = [head.encode()]
        out += [b"".join(blocks[i : i + CHUNK_PEERS]) for i in range(0, len(blocks), CHUNK_PEERS)]
        out.append(b"\n")
        return out


_NODE_ID: Final = operator.attrgetter("node_id")
#: The ``[Peer]`` blocks rendered in this process, by peer (:func:`peer_block`).
_shared_blocks: dict[DesiredPeer, bytes] = {}
_shared_lock = threading.Lock()
_prune_at = SHARED_BLOCKS_MIN
#: Whether config files keep their blocks between writes (:func:`keep_blocks`).
_keep_blocks = False


def keep_blocks() -> None:
    """From now on each config file keeps its ``[Peer]`` blocks between writes
    (:class:`PeerBlocks`), one copy of each shared by the agents of the process: called
    once a process runs several agents (the fleet benchmark: 125 agents of a 10,000-member
    mesh per process, where rendering every file whole was most of their CPU). A process
    of one agent renders its file whole at each write (some 15 ms at 10,000 peers, at most
    once a second): keeping the blocks would cost it about 2 MiB (``B4.agent_rss``)."""
    global _keep_blocks  # noqa: PLW0603 - one process-wide switch, flipped once
    _keep_blocks = True


def blocks_kept() -> bool:
    """Whether :func:`keep_blocks` was called."""
    return _keep_blocks


def peer_block(peer: DesiredPeer) -> bytes:
    """The encoded ``[Peer]`` block of ``peer`` (b"": it is invalid and left out); once
    blocks are kept (:func:`keep_blocks`), one copy per process, shared by its agents.
    Equal peers render alike, so whichever copy is returned is the right one."""
    if not _keep_blocks:
        text = _peer_block(peer)
        return text.encode() if text is not None else b""
    block = _shared_blocks.get(peer)
    if block is None:
        text = _peer_block(peer)
        block = text.encode() if text is not None else b""
        with _shared_lock:
            block = _shared_blocks.setdefault(peer, block)
            if len(_shared_blocks) >= _prune_at:
                _prune_shared_blocks()
    return block


def _prune_shared_blocks() -> None:
    """Drop the blocks that only :data:`_shared_blocks` holds (no agent's file has them any
    more); the next prune comes when what is left has doubled. Under ``_shared_lock``."""
    global _prune_at  # noqa: PLW0603 - the process-wide bound, moved with the prune
    shared = _shared_blocks
    for peer in list(shared):
        block = shared[peer]
        if not block or sys.getrefcount(block) <= 3:  # this dict, ``block``, the call's argument
            del shared[peer]
    _prune_at = max(SHARED_BLOCKS_MIN, 2 * len(shared))


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
