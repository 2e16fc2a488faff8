"""The address fold's state (docs/design.md §8): what each node holds, quarantined and
pending offsets, and how each is persisted in the state hash. Pure.

:mod:`consumers.ipam.allocate` changes it entry by entry; readers of the state hash (the
API, ``nodes``, ``status``) decode its fields with these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from consumers.status.model import PENDING, Issue

#: Field of the clock, pending counter and pool in the state hash.
META_FIELD: Final = "meta"
#: Field-name prefixes in the state hash: node address, quarantined offset, pending node.
NODE_FIELD: Final = "n:"
QUARANTINE_FIELD: Final = "q:"
PENDING_FIELD: Final = "p:"
#: Field listing every pending node as an :class:`Issue` (what a status reads, one HGET).
PENDING_ISSUES_FIELD: Final = "~pending"


class Address(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A node's address offset; ``live`` while it holds it (else its last address).

    Defaults are left out of the state hash, so a node whose pass never expires is
    stored byte for byte as before expirations were kept (audit digests compare bytes).
    """

    offset: int
    live: bool
    public_key: str = ""
    #: Unix time the node's pass expires (None: never): a fact passed on to the agents,
    #: who judge it by their clock; an expired pass keeps its address.
    expires: int | None = None


class Quarantine(msgspec.Struct, frozen=True, gc=False):
    """An offset released by ``node_id``; nobody else may take it before block ``until``."""

    node_id: str
    until: int


class Pending(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A live member waiting for an address; ``seq`` orders the queue."""

    seq: int
    public_key: str
    #: Block of the change that made it wait (0: from before it was kept).
    block: int = 0
    expires: int | None = None


class Meta(msgspec.Struct, frozen=True, gc=False):
    pool: str
    pool6: str = ""
    clock: int = 0
    seq: int = 0


@dataclass(eq=False)
class IpamState:
    """Mutable fold state; ``apply`` updates it in place and returns it."""

    #: 1 for every offset that is held, quarantined or unusable (network, broadcast).
    blocked: bytearray
    #: Every node that ever held an address: its current or last offset.
    nodes: dict[str, Address] = field(default_factory=dict)
    #: offset -> node holding it.
    holder: dict[int, str] = field(default_factory=dict)
    quarantine: dict[int, Quarantine] = field(default_factory=dict)
    #: (until, offset) heap over ``quarantine`` (may hold stale items).
    expiries: list[tuple[int, int]] = field(default_factory=list)
    #: Nodes waiting for an address, in FIFO order.
    pending: dict[str, Pending] = field(default_factory=dict)
    #: Highest block number seen (the quarantine clock).
    clock: int = 0
    seq: int = 0
    dirty: set[str] = field(default_factory=set)


_DECODERS: Final[dict[str, msgspec.json.Decoder[Any]]] = {
    NODE_FIELD: msgspec.json.Decoder(Address),
    QUARANTINE_FIELD: msgspec.json.Decoder(Quarantine),
    PENDING_FIELD: msgspec.json.Decoder(Pending),
}
_META_DECODER: Final = msgspec.json.Decoder(Meta)


def pending_issues(state: IpamState) -> bytes | None:
    """The :data:`PENDING_ISSUES_FIELD` value: every pending node, in queue order (None: none)."""
    if not state.pending:
        return None
    return msgspec.json.encode(
        [
            Issue(kind=PENDING, reason="pool-exhausted", node=node, block=p.block)
            for node, p in state.pending.items()
        ]
    )
