"""The address fold (docs/design.md §8): membership changes in, peers with addresses out. Pure.

Addresses are host offsets into the IPv4 pool (offset 0 and the broadcast offset
are never used); the optional IPv6 pool gives the same offset. The allocation is a
pure function of the ordered registry stream and the pool settings:

* a node keeps its address across key changes and transfers;
* a node that leaves and returns gets its old address back if it is still free;
* a released address is quarantined for ``quarantine_blocks`` blocks (measured by
  the ``block_number`` of the entries) before another node may take it;
* a new node starts probing at a hash of its id; an exhausted pool leaves it
  pending (FIFO), retried whenever space frees.

A bytearray marks every blocked offset, so probing runs at C speed and a full
pool is detected in O(1) from the counts.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from consumers.ipam.state import (
    _DECODERS,
    _META_DECODER,
    META_FIELD,
    NODE_FIELD,
    PENDING_FIELD,
    PENDING_ISSUES_FIELD,
    QUARANTINE_FIELD,
    Address,
    IpamState,
    Meta,
    Pending,
    Quarantine,
    pending_issues,
)
from shared import settings
from shared.errors import DecodeError, SettingsError
from shared.events import (
    AllocationPending,
    Anomaly,
    Conflict,
    NodeChanged,
    NodeJoined,
    NodeLeft,
    PeerRemove,
    PeersChange,
    PeersSnapshot,
    PeerUpsert,
)
from shared.validate import excerpt, is_valid_node_id, is_valid_wg_key

if TYPE_CHECKING:
    from shared.settings import Settings

#: Default IPv4 pool.
DEFAULT_POOL: Final = settings.DEFAULT_POOL
#: Default quarantine of a released address (blocks).
DEFAULT_QUARANTINE_BLOCKS: Final = settings.DEFAULT_QUARANTINE_BLOCKS
__all__ = [
    "DEFAULT_POOL",
    "DEFAULT_QUARANTINE_BLOCKS",
    "FOLD",
    "META_FIELD",
    "NODE_FIELD",
    "PENDING_FIELD",
    "PENDING_ISSUES_FIELD",
    "QUARANTINE_FIELD",
    "Address",
    "IpamFold",
    "IpamState",
    "Meta",
    "Pending",
    "Quarantine",
    "fold",
    "pending_issues",
]

Network4 = ipaddress.IPv4Network
Network6 = ipaddress.IPv6Network

#: What the fold reads, and which of those give a node its peer (isinstance tuples, built once).
_CHANGES: Final = (NodeJoined, NodeChanged, NodeLeft, Conflict, Anomaly)
_UPSERTS: Final = (NodeJoined, NodeChanged)
#: The last octet of an IPv4 address, by value.
_OCTETS: Final = tuple(str(i) for i in range(256))
_encode: Final = msgspec.json.Encoder().encode


class IpamFold:
    """The ipam stage's rules (the ``Fold`` protocol of ``consumers.stage``)."""

    name = "ipam"
    accepts: tuple[type, ...] = (NodeJoined, NodeChanged, NodeLeft, Conflict, Anomaly)

    def __init__(
        self,
        pool: Network4 | str = DEFAULT_POOL,
        pool6: Network6 | str | None = None,
        quarantine_blocks: int = DEFAULT_QUARANTINE_BLOCKS,
    ) -> None:
        settings.check(settings.pool_problems(str(pool), str(pool6 or "")))
        self.pool = ipaddress.IPv4Network(pool)
        self.pool6 = ipaddress.IPv6Network(pool6) if pool6 else None
        self.quarantine_blocks = quarantine_blocks
        self.size = self.pool.num_addresses
        #: Usable offsets are 1 .. size - 2.
        self.usable = self.size - 2
        self._base4 = int(self.pool.network_address)
        self._base6 = int(self.pool6.network_address) if self.pool6 else 0
        self._meta_pool = (str(self.pool), str(self.pool6 or ""))
        #: "a.b.c." of each /24 of the pool an address was formatted in (filled as used).
        self._heads: dict[int, str] = {}

    @classmethod
    def from_settings(cls, cfg: Settings) -> IpamFold:
        return cls(cfg.pool, cfg.pool6 or None, cfg.quarantine_blocks)

    # --- Fold protocol ------------------------------------------------------------

    def initial(self) -> IpamState:
        blocked = bytearray(self.size)
        blocked[0] = blocked[-1] = 1
        return IpamState(blocked, dirty={META_FIELD})

    def load(self, fields: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> IpamState:
        """The state of persisted ``fields``: a mapping, or (name, value) pairs in any order."""
        state = self.initial()
        pairs = fields.items() if isinstance(fields, Mapping) else fields
        intern = sys.intern
        pending: dict[str, Pending] = {}
        listed = False
        for name, raw in pairs:
            prefix, _, rest = name.partition(":")
            decoder = _DECODERS.get(prefix + ":")
            if decoder is None:
                if name == META_FIELD:
                    meta = _META_DECODER.decode(raw)
                    if (meta.pool, meta.pool6) != self._meta_pool:
                        raise SettingsError(
                            "WGCHAIN_POOL",
                            f"state was allocated from {meta.pool} {meta.pool6}; "
                            "replay to change pools",
                        )
                    state.clock, state.seq = meta.clock, meta.seq
                    state.dirty.discard(META_FIELD)
                elif name == PENDING_ISSUES_FIELD:
                    listed = True
                continue
            value = decoder.decode(raw)
            if isinstance(value, Address):
                node = intern(rest)
                if value.public_key:
                    value = Address(
                        value.offset, value.live, intern(value.public_key), value.expires
                    )
                state.nodes[node] = value
                if value.live:
                    state.holder[value.offset] = node
                    state.blocked[value.offset] = 1
            elif isinstance(value, Quarantine):
                offset = int(rest)
                state.quarantine[offset] = Quarantine(intern(value.node_id), value.until)
                state.blocked[offset] = 1
                state.expiries.append((value.until, offset))
            elif isinstance(value, Pending):
                pending[intern(rest)] = value
        heapq.heapify(state.expiries)
        state.pending = dict(sorted(pending.items(), key=lambda item: (item[1].seq, item[0])))
        if state.pending and not listed:
            state.dirty.add(PENDING_ISSUES_FIELD)  # persisted before the list was kept
        return state

    def apply(
        self, state: IpamState, entry_id: str, entry: Any
    ) -> tuple[IpamState, list[PeersChange]]:
        quick = QUICK.get(type(entry))
        if quick is not None:
            out = quick(self, state, entry_id, entry)
            if out is not None:
                return state, out
        return self._apply(state, entry_id, entry)

    def _apply(
        self, state: IpamState, entry_id: str, entry: Any
    ) -> tuple[IpamState, list[PeersChange]]:
        """The general step of :meth:`apply` (every entry the quick steps leave)."""
        if not isinstance(entry, _CHANGES):
            raise TypeError(f"ipam folds registry changes, not {type(entry).__name__}")
        block = entry.block_number
        step = _Step(self, state, entry_id, entry.cause, block)
        if block > state.clock:
            state.clock = block
            state.dirty.add(META_FIELD)
        if state.expiries and state.expiries[0][0] <= state.clock and self._expire(state):
            step.drain()
        if isinstance(entry, _UPSERTS):
            step.upsert(entry.node_id, entry.public_key, entry.expires)
        elif isinstance(entry, NodeLeft) and step.remove(entry.node_id):
            step.drain()
        return state, step.out

    def take_changes(self, state: IpamState) -> tuple[dict[str, bytes], set[str]]:
        to_set: dict[str, bytes] = {}
        to_del: set[str] = set()
        nodes, quarantine, pending = state.nodes, state.quarantine, state.pending
        listed = False  # whether the pending list (it sorts last) needs writing
        value: msgspec.Struct | None
        for name in sorted(state.dirty):  # _field's values, the common prefixes inline
            kind = name[:2]
            if kind == NODE_FIELD:
                value = nodes.get(name[2:])
            elif kind == QUARANTINE_FIELD:
                value = quarantine.get(int(name[2:]))
            elif kind == PENDING_FIELD:
                value = pending.get(name[2:])
                listed = True  # the pending list changed too
            else:
                raw = self._field(state, name)
                if raw is None:
                    to_del.add(name)
                else:
                    to_set[name] = raw
                continue
            if value is None:
                to_del.add(name)
            else:
                to_set[name] = _encode(value)
        if listed and PENDING_ISSUES_FIELD not in state.dirty:
            issues = pending_issues(state)
            if issues is None:
                to_del.add(PENDING_ISSUES_FIELD)
            else:
                to_set[PENDING_ISSUES_FIELD] = issues
        state.dirty.clear()
        return to_set, to_del

    def snapshot(self, state: IpamState) -> bytes:
        """The full peer set (every node holding an address), for ``Keys.snapshot``."""
        live = [(node_id, a) for node_id, a in state.nodes.items() if a.live]
        live.sort()  # by node id (each node once)
        clock = state.clock
        if self.pool6 is not None:
            addresses = self.addresses
            peers = [
                PeerUpsert(node_id, a.public_key, v4, "snapshot", "snapshot", clock, v6, a.expires)
                for node_id, a in live
                for v4, v6 in [addresses(a.offset)]
            ]
        else:  # addresses() inline: the /24's cached head, then the last octet
            base, heads, head = self._base4, self._heads, self._head
            peers = [
                PeerUpsert(
                    node_id,
                    a.public_key,
                    (heads.get(n >> 8) or head(n)) + _OCTETS[n & 255],
                    "snapshot",
                    "snapshot",
                    clock,
                    None,
                    a.expires,
                )
                for node_id, a in live
                for n in [base + a.offset]
            ]
        return _encode(PeersSnapshot(peers))

    def snapshot_size(self, state: IpamState) -> int:
        """The peers :meth:`snapshot` holds: the nodes holding an address."""
        return len(state.holder)

    # --- helpers --------------------------------------------------------------------

    def dump(self, state: IpamState) -> dict[str, bytes]:
        """Every persisted field of ``state`` (what the state hash holds after all commits)."""
        names = [META_FIELD]
        names += [f"{NODE_FIELD}{n}" for n in state.nodes]
        names += [f"{QUARANTINE_FIELD}{o}" for o in state.quarantine]
        names += [f"{PENDING_FIELD}{n}" for n in state.pending]
        names.append(PENDING_ISSUES_FIELD)
        fields = {name: self._field(state, name) for name in sorted(names)}
        return {k: v for k, v in fields.items() if v is not None}

    def _field(self, state: IpamState, name: str) -> bytes | None:
        if name == META_FIELD:
            meta = Meta(*self._meta_pool, clock=state.clock, seq=state.seq)
            return msgspec.json.encode(meta)
        if name == PENDING_ISSUES_FIELD:
            return pending_issues(state)
        prefix, _, rest = name.partition(":")
        value: msgspec.Struct | None
        if prefix + ":" == NODE_FIELD:
            value = state.nodes.get(rest)
        elif prefix + ":" == QUARANTINE_FIELD:
            value = state.quarantine.get(int(rest))
        else:
            value = state.pending.get(rest)
        return None if value is None else msgspec.json.encode(value)

    def _expire(self, state: IpamState) -> bool:
        """Free every quarantined offset whose time has come; True when any was freed."""
        freed = False
        while state.expiries and state.expiries[0][0] <= state.clock:
            until, offset = heapq.heappop(state.expiries)
            held = state.quarantine.get(offset)
            if held is not None and held.until == until:
                del state.quarantine[offset]
                state.dirty.add(f"{QUARANTINE_FIELD}{offset}")
                state.blocked[offset] = 0
                freed = True
        return freed

    def free_count(self, state: IpamState) -> int:
        """Offsets that any node may take right now."""
        return self.usable - len(state.holder) - len(state.quarantine)

    def start(self, node_id: str) -> int:
        """The offset where probing starts for ``node_id`` (stable across runs and hosts)."""
        digest = hashlib.sha256(node_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.usable + 1

    def place(self, state: IpamState, node_id: str) -> int | None:
        """The offset ``node_id`` would get now, or None when the pool has none for it."""
        last = state.nodes.get(node_id)
        if last is not None and last.offset not in state.holder:
            held = state.quarantine.get(last.offset)
            if held is None or held.node_id == node_id:
                return last.offset
        if self.free_count(state) <= 0:
            return None
        begin = self.start(node_id)
        offset = state.blocked.find(0, begin)
        if offset < 0:
            offset = state.blocked.find(0, 1, begin)
        return offset if offset > 0 else None

    def addresses(self, offset: int) -> tuple[str, str | None]:
        """The IPv4 (and IPv6) address of ``offset``."""
        n = self._base4 + offset  # v4 is str(IPv4Address(n)), its first three octets cached
        head = self._heads.get(n >> 8) or self._head(n)
        v6 = str(ipaddress.IPv6Address(self._base6 + offset)) if self.pool6 else None
        return head + _OCTETS[n & 255], v6

    def _head(self, n: int) -> str:
        """ "a.b.c." of the IPv4 address ``n`` (cached for its /24)."""
        head = self._heads[n >> 8] = f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}."
        return head


@dataclass(slots=True, eq=False)
class _Step:
    """The work of one registry entry."""

    fold: IpamFold
    state: IpamState
    cause: str
    origin: str
    block: int
    out: list[PeersChange] = field(default_factory=list)

    def upsert(self, node_id: str, key: str, expires: int | None = None) -> None:
        if not is_valid_node_id(node_id) or not is_valid_wg_key(key):
            raise DecodeError(f"refusing hostile peer {excerpt(node_id)} / {excerpt(key)}")
        state = self.state
        current = state.nodes.get(node_id)
        if current is not None and current.live:
            if current.public_key != key or current.expires != expires:
                state.nodes[node_id] = Address(current.offset, True, key, expires)
                state.dirty.add(f"{NODE_FIELD}{node_id}")
            self._announce(node_id, current.offset, key, expires)
            return
        if node_id in state.pending:
            self._set_pending(
                node_id,
                msgspec.structs.replace(state.pending[node_id], public_key=key, expires=expires),
            )
            return
        offset = self.fold.place(state, node_id)
        if offset is None:
            self._set_pending(node_id, Pending(state.seq, key, self.block, expires))
            state.seq += 1
            state.dirty.add(META_FIELD)
            self.out.append(AllocationPending(node_id, self.cause, self.origin, self.block))
            return
        self._take(node_id, offset, key, expires)

    def remove(self, node_id: str) -> bool:
        """Release ``node_id``'s address; True when an offset became free for everyone."""
        state = self.state
        self.out.append(PeerRemove(node_id, self.cause, self.origin, self.block))
        if state.pending.pop(node_id, None) is not None:
            state.dirty.add(f"{PENDING_FIELD}{node_id}")
        current = state.nodes.get(node_id)
        if current is None or not current.live:
            return False
        offset = current.offset
        del state.holder[offset]
        state.nodes[node_id] = Address(offset, False, current.public_key, current.expires)
        state.dirty.add(f"{NODE_FIELD}{node_id}")
        if self.fold.quarantine_blocks == 0:
            state.blocked[offset] = 0
            return True
        until = state.clock + self.fold.quarantine_blocks
        state.quarantine[offset] = Quarantine(node_id, until)
        state.dirty.add(f"{QUARANTINE_FIELD}{offset}")
        heapq.heappush(state.expiries, (until, offset))
        return False

    def drain(self) -> None:
        """Give addresses to pending nodes, first come first served, while any are free."""
        state = self.state
        for node_id in list(state.pending):
            offset = self.fold.place(state, node_id)
            if offset is None:
                if self.fold.free_count(state) <= 0:
                    return
                continue
            pending = state.pending.pop(node_id)
            state.dirty.add(f"{PENDING_FIELD}{node_id}")
            self._take(node_id, offset, pending.public_key, pending.expires)

    def _set_pending(self, node_id: str, pending: Pending) -> None:
        self.state.pending[node_id] = pending
        self.state.dirty.add(f"{PENDING_FIELD}{node_id}")

    def _take(self, node_id: str, offset: int, key: str, expires: int | None) -> None:
        state = self.state
        if state.quarantine.pop(offset, None) is not None:
            state.dirty.add(f"{QUARANTINE_FIELD}{offset}")
        state.holder[offset] = node_id
        state.blocked[offset] = 1
        state.nodes[node_id] = Address(offset, True, key, expires)
        state.dirty.add(f"{NODE_FIELD}{node_id}")
        self._announce(node_id, offset, key, expires)

    def _announce(self, node_id: str, offset: int, key: str, expires: int | None) -> None:
        v4, v6 = self.fold.addresses(offset)
        self.out.append(
            PeerUpsert(node_id, key, v4, self.cause, self.origin, self.block, v6, expires)
        )


# --- quick steps (docs/design.md §8.5) ---------------------------------------------------
#
# Most entries of a long registry stream are a live member's key change and a node joining
# or leaving while no quarantine is due and nobody waits. Each function below folds such an
# entry in a few dictionary operations, with exactly the general step's result (state,
# change marks, outputs); for anything else it returns None *before* changing anything but
# the clock (which the general step sets the same way), and :meth:`IpamFold.apply` takes
# the general step.


def _tick(state: IpamState, block: int) -> bool:
    """Move the clock to ``block``; False when a quarantine is due (the general step)."""
    if block > state.clock:
        state.clock = block
        state.dirty.add(META_FIELD)
    expiries = state.expiries
    return not expiries or expiries[0][0] > state.clock


def _quick_upsert(
    fold: IpamFold, state: IpamState, entry_id: str, entry: NodeJoined | NodeChanged
) -> list[PeersChange] | None:
    """A ``NodeJoined``/``NodeChanged`` of a valid peer that holds its address, or that takes
    a free one (it is not waiting for one)."""
    node_id, key, expires = entry.node_id, entry.public_key, entry.expires
    if not _tick(state, entry.block_number) or not (
        is_valid_node_id(node_id) and is_valid_wg_key(key)
    ):
        return None
    nodes = state.nodes
    current = nodes.get(node_id)
    if current is not None and current.live:
        offset = current.offset
        if current.public_key != key or current.expires != expires:
            nodes[node_id] = Address(offset, True, key, expires)
            state.dirty.add(NODE_FIELD + node_id)
    else:
        if node_id in state.pending:
            return None
        placed = fold.place(state, node_id)
        if placed is None:
            return None
        offset = placed
        dirty = state.dirty
        if state.quarantine.pop(offset, None) is not None:
            dirty.add(f"{QUARANTINE_FIELD}{offset}")
        state.holder[offset] = node_id
        state.blocked[offset] = 1
        nodes[node_id] = Address(offset, True, key, expires)
        dirty.add(NODE_FIELD + node_id)
    v4, v6 = fold.addresses(offset)
    return [PeerUpsert(node_id, key, v4, entry_id, entry.cause, entry.block_number, v6, expires)]


def _quick_left(
    fold: IpamFold, state: IpamState, entry_id: str, entry: NodeLeft
) -> list[PeersChange] | None:
    """A ``NodeLeft`` whose address goes into quarantine (nothing frees for a waiting node)."""
    if fold.quarantine_blocks == 0 or not _tick(state, entry.block_number):
        return None
    node_id, block = entry.node_id, entry.block_number
    out: list[PeersChange] = [PeerRemove(node_id, entry_id, entry.cause, block)]
    if state.pending.pop(node_id, None) is not None:
        state.dirty.add(PENDING_FIELD + node_id)
    current = state.nodes.get(node_id)
    if current is None or not current.live:
        return out
    offset = current.offset
    del state.holder[offset]
    state.nodes[node_id] = Address(offset, False, current.public_key, current.expires)
    until = state.clock + fold.quarantine_blocks
    state.quarantine[offset] = Quarantine(node_id, until)
    dirty = state.dirty
    dirty.add(NODE_FIELD + node_id)
    dirty.add(f"{QUARANTINE_FIELD}{offset}")
    heapq.heappush(state.expiries, (until, offset))
    return out


#: The quick step of each registry change type (None from it: take the general step).
QUICK: Final[dict[type, Any]] = {
    NodeJoined: _quick_upsert,
    NodeChanged: _quick_upsert,
    NodeLeft: _quick_left,
}

#: An ipam fold with the default pool (commands build theirs with ``from_settings``).
FOLD: Final = IpamFold()


def fold(
    entries: Iterable[tuple[str, Any]],
    state: IpamState | None = None,
    ipam: IpamFold = FOLD,
) -> tuple[IpamState, list[PeersChange]]:
    """Fold ``(entry id, registry change)`` pairs from ``state``; all outputs in order."""
    state = ipam.initial() if state is None else state
    outputs: list[PeersChange] = []
    for entry_id, entry in entries:
        state, out = ipam.apply(state, entry_id, entry)
        outputs.extend(out)
    return state, outputs
