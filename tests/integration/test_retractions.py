"""Deep-reorg retractions through the real stages on a real Redis.

Each case writes an ``events`` stream with a seeded random history, lets the
registry and ipam stages fold part or all of it, then appends retractions for
an orphaned suffix (newest first, as the listener does) and a different
canonical suffix. Registry state, allocations and the peer set every agent
folds must equal a clean run, in a fresh namespace, over the canonical history
only.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis
from factories import wg_key

from consumers.agent.desired import PeerTable
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import FOLD as REGISTRY
from consumers.stage import Stage
from shared.events import (
    GENESIS_DIGEST,
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    NodeAccessTransferred,
    PublicKeyUpdated,
    Retracted,
    effective,
    from_fields,
    to_fields,
)
from shared.keys import Keys

pytestmark = pytest.mark.integration

CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
OWNERS = [f"0x{i:040x}" for i in range(1, 6)]


class Chain:
    """Writes an events stream the way the listener does (digest-chained)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self.prev = GENESIS_DIGEST
        self.appended: list[tuple[str, LogEntry]] = []

    def append(self, block: int, event: ChainEvent, fork: str = "a") -> str:
        entry = LogEntry(
            31337,
            CONTRACT,
            block,
            "0x" + (fork * 64)[:64],
            f"0x{block:064x}",
            0,
            1_700_000_000 + block,
            event,
        ).with_digest(self.prev)
        self.prev = entry.digest
        entry_id = self.client.xadd(self.keys.events, to_fields(entry))  # type: ignore[arg-type]
        self.appended.append((entry_id.decode(), entry))
        return entry_id.decode()

    def retract_after(self, block: int) -> int:
        """Retract every live entry above ``block``, newest first; how many."""
        live = effective(self.appended)
        orphans = [(i, e) for i, e in live if e.block_number > block]
        for entry_id, entry in reversed(orphans):
            retraction = Retracted(
                entry_id=entry_id, block_number=entry.block_number, block_hash=entry.block_hash
            ).with_digest(self.prev)
            self.prev = retraction.digest
            rid = self.client.xadd(self.keys.events, to_fields(retraction))  # type: ignore[arg-type]
            self.appended.append((rid.decode(), retraction))  # type: ignore[arg-type]
        return len(orphans)


def random_events(rng: random.Random, count: int, next_token: list[int]) -> list[ChainEvent]:
    """A history with grants, revokes, transfers, key updates and conflicts."""
    events: list[ChainEvent] = []
    for _ in range(count):
        roll = rng.random()
        token = next_token[0]
        if roll < 0.45 or token == 1:
            owner = rng.choice(OWNERS)
            node = f"node-{rng.randrange(12)}"  # repeats: node conflicts
            events.append(NodeAccessGranted(token, node, owner, wg_key(rng.randrange(8))))
            next_token[0] += 1
        elif roll < 0.6:
            events.append(NodeAccessRevoked(rng.randrange(1, token), "x"))
        elif roll < 0.8:
            events.append(
                NodeAccessTransferred(
                    rng.randrange(1, token), rng.choice(OWNERS), rng.choice(OWNERS)
                )
            )
        else:
            events.append(PublicKeyUpdated(rng.choice(OWNERS), wg_key(rng.randrange(8))))
    return events


def stages(client: redis.Redis, keys: Keys) -> list[Stage[Any]]:
    ipam = IpamFold("10.9.0.0/28", quarantine_blocks=3)  # small pool: pending + quarantine
    return [Stage(client, keys, REGISTRY), Stage(client, keys, ipam)]


def drain(*running: Stage[Any]) -> None:
    for stage in running:
        while stage.step(block_ms=None, count=7):  # small batches: runs split across batches
            pass


def peer_table(client: redis.Redis, keys: Keys) -> dict[str, Any]:
    raw: Any = client.xrange(keys.peers)
    table = PeerTable()
    for _, entry in effective([(i.decode(), from_fields(f)) for i, f in raw]):
        table.apply(entry)
    return {n: (r.public_key, r.ipv4) for n, r in table.records.items()}


def state(client: redis.Redis, keys: Keys, stage: str) -> dict[bytes, bytes]:
    return client.hgetall(keys.state(stage))  # type: ignore[return-value]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("caught_up", [True, False], ids=["stages-caught-up", "stages-behind"])
def test_retractions_converge_to_a_clean_fold_of_the_canonical_chain(
    redis_client: redis.Redis, seed: int, caught_up: bool
) -> None:
    rng = random.Random(seed)
    live = Keys(31337, CONTRACT)
    chain = Chain(redis_client, live)
    canonical: list[tuple[int, ChainEvent, str]] = []
    tokens = [1]
    block = 0
    for event in random_events(rng, 40, tokens):
        block += 1
        chain.append(block, event)
        canonical.append((block, event, "a"))
    running = stages(redis_client, live)
    drain(*running)
    for round_ in range(3):  # nested reorgs; some reach below the previous fork
        fork_block = block - rng.randrange(3, 8)
        orphan_tokens = [tokens[0]]
        for event in random_events(rng, rng.randrange(3, 9), orphan_tokens):
            block += 1
            chain.append(block, event, fork="b")
        if caught_up:
            drain(*running)
        else:
            drain(running[0])  # ipam still behind: retractions meet unfolded inputs
        assert chain.retract_after(fork_block) > 0
        canonical = [c for c in canonical if c[0] <= fork_block]
        block = fork_block
        fork = "cdef"[round_]
        for event in random_events(rng, rng.randrange(2, 8), tokens):
            block += 1
            chain.append(block, event, fork=fork)
            canonical.append((block, event, fork))
        drain(*running)

    replay = Chain(redis_client, Keys(31337, CONTRACT, prefix="replay"))
    for number, event, fork in canonical:
        replay.append(number, event, fork=fork)
    drain(*stages(redis_client, replay.keys))

    assert state(redis_client, live, "registry") == state(redis_client, replay.keys, "registry")
    assert state(redis_client, live, "ipam") == state(redis_client, replay.keys, "ipam")
    assert peer_table(redis_client, live) == peer_table(redis_client, replay.keys)
    assert peer_table(redis_client, live), "the history leaves some peers"


def test_retractions_reach_every_stream_and_name_their_cause(redis_client: redis.Redis) -> None:
    keys = Keys(31337, CONTRACT)
    chain = Chain(redis_client, keys)
    chain.append(1, NodeAccessGranted(1, "node-a", OWNERS[0], wg_key(1)))
    orphan = chain.append(2, NodeAccessGranted(2, "node-b", OWNERS[1], wg_key(2)), fork="b")
    running = stages(redis_client, keys)
    drain(*running)
    assert set(peer_table(redis_client, keys)) == {"node-a", "node-b"}

    chain.retract_after(1)
    chain.append(2, NodeAccessGranted(2, "node-c", OWNERS[1], wg_key(3)), fork="c")
    drain(*running)

    def typed(stream: str) -> list[tuple[str, Any]]:
        raw: Any = redis_client.xrange(stream)
        return [(i.decode(), from_fields(f)) for i, f in raw]

    registry = typed(keys.registry)
    peers = typed(keys.peers)
    orphan_out = [i for i, e in registry if getattr(e, "cause", "") == orphan]
    reg_retractions = [e for _, e in registry if isinstance(e, Retracted)]
    assert [r.entry_id for r in reg_retractions] == orphan_out[::-1]
    assert all(r.block_number == 2 for r in reg_retractions)
    peer_retractions = [e for _, e in peers if isinstance(e, Retracted)]
    assert peer_retractions, "ipam forwarded the retraction to peers"
    assert {r.cause for r in peer_retractions} <= {i for i, _ in registry}
    assert set(peer_table(redis_client, keys)) == {"node-a", "node-c"}
