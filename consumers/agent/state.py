"""What an agent applied, as it keeps it on its host: the format of the state file. Pure.

Beside the config file (``IF.conf``) an agent keeps ``IF.state`` (a snapshot) and
``IF.state.journal`` (one JSON line per change since that snapshot), both mode 0600:
the peers and addresses it applied, up to which ``peers`` stream position and block,
for which network (keys tag), node and interface. A restarted agent holds that
configuration until the stream has caught up past that block (README, "Agent").

Why a journal: a change must reach the state *before* it reaches the interface
(write-ahead), or a restart could bring back a peer that was already removed; a
whole snapshot per change would cost O(peers). So every change is first appended
to the journal (O(change)), then applied; a change that fails is followed by a line
that puts the peers back. The append is a ``write``: the kernel has it before the
interface changes, so an agent killed or restarted at any instant, and a host
rebooted cleanly, find it. A change that removes a peer is then flushed to the disk
(``fdatasync``) before the agent reads on; only a power loss within that moment (the
flush takes 0.05 to 1 ms on the development VM) could leave a removed peer in the
file, to be restored at boot until the agent reaches Redis. Flushing *before* the
apply would close that window at the price of the flush on every removal's path
(measured: one key rotation at 10,000 peers went from 1.2x to 2.1x a bare
``wg set``). Every 30 s at most while changes keep coming (sooner when the journal
passes 4 MiB), and at stop, the agent writes a new snapshot (temp file, fsync,
rename) and empties the journal. Journal lines carry increasing sequence numbers and the
snapshot the last one it includes, so lines left by a crash between the rename and
the truncation are skipped; a torn last line (no newline: the write was cut) is
ignored.

Every value read back is validated as stream input is (node ids, keys, networks,
endpoints, stream ids); anything off, a file of another network, node or interface,
or of an unknown version makes the whole state unusable (:class:`StateProblem`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from consumers.agent.desired import DesiredPeer, parse_endpoint
from consumers.agent.render import normalise_ips
from shared.validate import is_valid_node_id, is_valid_wg_key

#: Version of the state file format.
STATE_VERSION: Final = 1
#: Peers encoded per piece of a snapshot.
CHUNK_PEERS: Final = 512
_STREAM_ID_RE: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


class StateProblem(Exception):
    """Raised when a state file is corrupt, foreign or of an unknown version (one line)."""


@dataclass(frozen=True, slots=True)
class Ident:
    """Whose state a file holds: the network (keys tag), node and interface."""

    network: str
    node: str
    interface: str


@dataclass(slots=True)
class AppliedState:
    """The applied configuration, and the stream position and block it covers."""

    position: str = "0-0"
    block: int = 0
    addresses: tuple[str, ...] = ()
    fail_closed: str | None = None
    peers: dict[str, DesiredPeer] = field(default_factory=dict)
    #: Sequence number of the last journal line this state includes.
    seq: int = 0
    #: Unix time the node's own pass expires (None: never): a host holding this state
    #: fails closed then, as it removes each peer at its own ``expires``.
    expires: int | None = None


class _Peer(msgspec.Struct, array_like=True, frozen=True):
    node: str
    key: str
    allowed: list[str]
    endpoint: str | None
    keepalive: int
    expires: int | None = None


class _Snapshot(msgspec.Struct, frozen=True):
    v: int
    network: str
    node: str
    interface: str
    seq: int
    position: str
    block: int
    addresses: list[str]
    fail_closed: str | None
    peers: list[_Peer]
    expires: int | None = None


class _Line(msgspec.Struct, frozen=True):
    seq: int
    position: str
    block: int
    addresses: list[str]
    fail_closed: str | None
    set: list[_Peer] = []
    gone: list[str] = []
    expires: int | None = None


_ENCODER: Final = msgspec.json.Encoder()
_SNAPSHOT: Final = msgspec.json.Decoder(_Snapshot)
_LINE: Final = msgspec.json.Decoder(_Line)


def _row(p: DesiredPeer) -> tuple[str, str, tuple[str, ...], str | None, int, int | None]:
    """A peer as its :class:`_Peer` (array-like) is encoded: a tuple is the same JSON array,
    built without a struct and a list per peer (a fill journals thousands)."""
    return (p.node_id, p.public_key, p.allowed_ips, p.endpoint, p.keepalive, p.expires)


def encode_snapshot(state: AppliedState, ident: Ident) -> Iterator[bytes]:
    """The snapshot file's bytes, in pieces (peers sorted by node id)."""
    head = _Snapshot(
        STATE_VERSION,
        ident.network,
        ident.node,
        ident.interface,
        state.seq,
        state.position,
        state.block,
        list(state.addresses),
        state.fail_closed,
        [],
        state.expires,
    )
    text = _ENCODER.encode(head)
    before, marker, tail = text.rpartition(b'"peers":[]')  # the last field but ``expires``
    assert marker
    assert tail.startswith(b',"expires":')
    yield before + b'"peers":['

    nodes = sorted(state.peers)
    for start in range(0, len(nodes), CHUNK_PEERS):
        chunk = [_row(state.peers[n]) for n in nodes[start : start + CHUNK_PEERS]]
        yield (b"," if start else b"") + _ENCODER.encode(chunk)[1:-1]
    yield b"]" + tail + b"\n"


def encode_line(
    seq: int,
    state: AppliedState,
    changed: Mapping[str, DesiredPeer | None],
) -> bytes:
    """One journal line: ``changed`` (node -> its applied peer, None: none) on top of the
    state before, which now has ``state``'s position, block, addresses and fail-closed."""
    sets: list[Any] = []  # _Peer rows as tuples (:func:`_row`)
    gone: list[str] = []
    for node, p in changed.items():
        if p is None:
            gone.append(node)
        else:
            sets.append(_row(p))
    line = _Line(
        seq,
        state.position,
        state.block,
        list(state.addresses),
        state.fail_closed,
        sets,
        gone,
        state.expires,
    )
    return _ENCODER.encode(line) + b"\n"


def decode(snapshot: bytes | None, journal: bytes, ident: Ident) -> AppliedState:
    """The state a snapshot and the journal after it describe; :class:`StateProblem` if
    either is unusable. ``snapshot`` None: only a journal (a first compaction never ran)."""
    state = AppliedState()
    if snapshot is not None:
        try:
            snap = _SNAPSHOT.decode(snapshot)
        except msgspec.DecodeError as exc:
            raise StateProblem(f"unreadable ({_short(exc)})") from None
        if snap.v != STATE_VERSION:
            raise StateProblem(f"unknown version {snap.v}")
        found = Ident(snap.network, snap.node, snap.interface)
        if found != ident:
            raise StateProblem(_foreign(found, ident))
        state = AppliedState(
            _position(snap.position),
            _block(snap.block),
            _addresses(snap.addresses),
            _reason(snap.fail_closed),
            _peers(snap.peers, {}),
            _seq(snap.seq),
            _expires(snap.expires),
        )
    for number, line in enumerate(_complete_lines(journal), start=1):
        try:
            delta = _LINE.decode(line)
        except msgspec.DecodeError as exc:
            raise StateProblem(f"journal line {number} unreadable ({_short(exc)})") from None
        seq = _seq(delta.seq)
        if seq <= state.seq:
            continue  # already in the snapshot (a crash between its rename and the truncation)
        state.peers = _peers(delta.set, state.peers)
        for node in delta.gone:
            state.peers.pop(_node(node), None)
        state.position = _position(delta.position)
        state.block = _block(delta.block)
        state.addresses = _addresses(delta.addresses)
        state.fail_closed = _reason(delta.fail_closed)
        state.expires = _expires(delta.expires)
        state.seq = seq
    if len({p.public_key for p in state.peers.values()}) != len(state.peers):
        raise StateProblem("two peers with one key")
    return state


def _complete_lines(journal: bytes) -> Iterable[bytes]:
    """Lines ended by a newline (a torn last one is dropped), blank ones skipped."""
    lines = journal.split(b"\n")
    return [line for line in lines[:-1] if line.strip()]


def _foreign(found: Ident, ident: Ident) -> str:
    for what, have, want in zip(
        ("network", "node", "interface"), (found.network, found.node, found.interface),
        (ident.network, ident.node, ident.interface), strict=True,
    ):  # fmt: skip
        if have != want:
            return f"of another {what} ({_short(have)}, this is {_short(want)})"
    return "foreign"


def _short(value: object) -> str:
    text = str(value).encode("unicode_escape", "backslashreplace").decode("ascii")
    return text[:60]


def _peers(items: Iterable[_Peer], into: dict[str, DesiredPeer]) -> dict[str, DesiredPeer]:
    for item in items:
        node = _node(item.node)
        if not is_valid_wg_key(item.key):
            raise StateProblem(f"peer {node}: invalid key")
        try:
            allowed = tuple(item.allowed)
            if not allowed:
                raise ValueError
            normalise_ips(allowed)  # each one a network (raises ValueError)
        except ValueError:
            raise StateProblem(f"peer {node}: invalid allowed IPs") from None
        if item.endpoint is not None and parse_endpoint(item.endpoint) != item.endpoint:
            raise StateProblem(f"peer {node}: invalid endpoint")
        if not 0 <= item.keepalive <= 65535:
            raise StateProblem(f"peer {node}: invalid keepalive")
        expires = _expires(item.expires)
        into[node] = DesiredPeer(node, item.key, allowed, item.endpoint, item.keepalive, expires)
    return into


def _node(node: str) -> str:
    if not is_valid_node_id(node):
        raise StateProblem(f"invalid node id {_short(node)}")
    return node


def _position(position: str) -> str:
    if not _STREAM_ID_RE.fullmatch(position):
        raise StateProblem(f"invalid stream position {_short(position)}")
    return position


def _block(block: int) -> int:
    if not 0 <= block < 2**63:
        raise StateProblem(f"invalid block {block}")
    return block


def _seq(seq: int) -> int:
    if not 0 <= seq < 2**63:
        raise StateProblem(f"invalid sequence number {seq}")
    return seq


def _addresses(addresses: list[str]) -> tuple[str, ...]:
    for text in addresses:
        try:
            ipaddress.ip_interface(text)
        except ValueError:
            raise StateProblem(f"invalid address {_short(text)}") from None
        if "/" not in text:
            raise StateProblem(f"address without prefix {_short(text)}")
    return tuple(addresses)


def _expires(expires: int | None) -> int | None:
    if expires is not None and not 0 <= expires < 2**64:
        raise StateProblem(f"invalid expiration {expires}")
    return expires


def _reason(reason: str | None) -> str | None:
    if reason is not None and not re.fullmatch(r"[a-z-]{1,40}", reason):
        raise StateProblem(f"invalid fail-closed reason {_short(reason)}")
    return reason
