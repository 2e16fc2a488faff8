"""A reproducible, realistic stream of contract events for the fold benchmarks.

First one grant per node (each node has its own owner and key), then a mix of key
rotations (75%), transfers to new owners (15%; the node goes keyless until that
owner sets a key) and revocations (10%); an event that picks a revoked node grants
it again. Entries are digest-chained and
appended with the listener's own atomic append (:class:`ListenerStore`), so the
``events`` stream looks exactly like one the listener wrote.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from typing import Final

import redis

from producers.listener.store import Cursor, ListenerStore
from shared.events import (
    GENESIS_DIGEST,
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    PublicKeyUpdated,
)
from shared.keys import Keys

CHAIN_ID: Final = 31337
CONTRACT: Final = "0x00000000000000000000000000000000000b3c11"
#: Events per synthetic block.
PER_BLOCK: Final = 10
#: Entries per append (one Lua call each).
APPEND_CHUNK: Final = 2000
#: Kinds of the events after the first grants, by cumulative share; an event that picks
#: a revoked node grants it again instead (about a tenth of the nodes are revoked).
MIX: Final = (("key", 0.75), ("transfer", 0.9), ("revoke", 1.0))


def keys() -> Keys:
    """The Redis keys of the synthetic network."""
    return Keys(CHAIN_ID, CONTRACT)


def node_name(i: int) -> str:
    """Node id of the i-th node."""
    return f"node-{i:06d}"


class Mix:
    """Generates the chain events; tracks tokens and owners so every event is plausible."""

    def __init__(self, nodes: int, seed: int = 6) -> None:
        self.rng = random.Random(seed)
        self.nodes = nodes
        self.next_token = 1
        self.next_owner = 0
        #: node index -> its active token (absent: revoked).
        self.active: dict[int, int] = {}
        self.token_owner: dict[int, str] = {}

    def owner(self) -> str:
        """A new owner address."""
        self.next_owner += 1
        return f"0x{0xB0B0000000 + self.next_owner:040x}"

    def key(self) -> str:
        """A new random WireGuard public key."""
        return base64.b64encode(self.rng.randbytes(32)).decode()

    def grant(self, node: int, owner: str | None = None) -> ChainEvent:
        """A new token for ``node`` (to a new owner unless given), with a new key."""
        token = self.next_token
        self.next_token += 1
        owner = owner or self.owner()
        self.active[node] = token
        self.token_owner[token] = owner
        return NodeAccessGranted(token, node_name(node), owner, self.key())

    def events(self, count: int) -> Iterator[ChainEvent]:
        """``count`` events: the first grants, then the mix."""
        rng = self.rng
        first = min(count, self.nodes)
        for i in range(first):
            yield self.grant(i)
        for _ in range(count - first):
            node = rng.randrange(self.nodes)
            token = self.active.get(node)
            if token is None:  # a revoked node: it is granted again
                yield self.grant(node)
                continue
            roll = rng.random()
            kind = next(k for k, edge in MIX if roll < edge)
            owner = self.token_owner[token]
            if kind == "key":
                yield PublicKeyUpdated(owner, self.key())
            elif kind == "transfer":
                to = self.owner()
                self.token_owner[token] = to
                yield NodeAccessTransferred(token, owner, to)
            else:
                del self.active[node]
                yield NodeAccessRevoked(token, node_name(node))


def entries(events: Iterator[ChainEvent]) -> Iterator[LogEntry]:
    """Chain events as digest-chained :class:`LogEntry` objects, ``PER_BLOCK`` per block."""
    prev = GENESIS_DIGEST
    for n, event in enumerate(events):
        block, index = divmod(n, PER_BLOCK)
        entry = LogEntry(
            chain_id=CHAIN_ID,
            contract=CONTRACT,
            block_number=block + 1,
            block_hash=f"0x{block + 1:064x}",
            tx_hash=f"0x{n + 1:064x}",
            log_index=index,
            block_timestamp=1_700_000_000 + block * 2,
            event=event,
        ).with_digest(prev)
        prev = entry.digest
        yield entry


def append(client: redis.Redis, count: int, nodes: int, seed: int = 6) -> int:
    """Append ``count`` events over ``nodes`` nodes to the events stream; returns the count."""
    store = ListenerStore(client, keys())
    cursor: Cursor | None = None
    chunk: list[LogEntry] = []
    written = 0

    def flush() -> None:
        """Append the chunk and move the cursor to its last entry."""
        nonlocal cursor, written
        last = chunk[-1]
        new = Cursor(last.block_number, last.block_hash, last.digest)
        store.commit(cursor, new, chunk)
        cursor = new
        written += len(chunk)
        chunk.clear()

    for entry in entries(Mix(nodes, seed).events(count)):
        chunk.append(entry)
        if len(chunk) >= APPEND_CHUNK and entry.log_index == PER_BLOCK - 1:
            flush()
    if chunk:
        flush()
    return written
