"""Peers retention and snapshots on a real Redis: trimmed streams, new and offline agents.

The ipam stage writes a snapshot (full peer set at a peers-stream id) and trims
the peers stream to ``retention`` entries, never past the snapshot. Agents that
are new, or were offline while entries they never read were trimmed, start from
the snapshot and tail; their peer table must equal an untrimmed reference run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import redis
from factories import wg_key

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import PeerTable
from consumers.agent.keys import generate_private_key_file
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import FOLD as REGISTRY
from consumers.stage import Stage
from shared.events import (
    GENESIS_DIGEST,
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    PublicKeyUpdated,
    Retracted,
    effective,
    from_fields,
    to_fields,
)
from shared.keys import Keys
from shared.redis_log import id_key

pytestmark = pytest.mark.integration

CONTRACT = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
RETENTION = 6


class Network:
    """One namespace: an events stream written like the listener, and its stages."""

    def __init__(self, client: redis.Redis, prefix: str, retention: int) -> None:
        self.client = client
        self.keys = Keys(31337, CONTRACT, prefix=prefix)
        self.prev = GENESIS_DIGEST
        self.ids: list[tuple[str, LogEntry]] = []
        ipam = IpamFold("10.5.0.0/24", quarantine_blocks=2)
        self.stages = [
            Stage(client, self.keys, REGISTRY),
            Stage(client, self.keys, ipam, retention=retention),
        ]

    def append(self, block: int, event: ChainEvent) -> None:
        entry = LogEntry(
            31337, CONTRACT, block, f"0x{block:064x}", "0x01", 0, 1_700_000_000 + block, event
        ).with_digest(self.prev)
        self.prev = entry.digest
        entry_id = self.client.xadd(self.keys.events, to_fields(entry)).decode()  # type: ignore[arg-type,union-attr]
        self.ids.append((entry_id, entry))

    def retract_after(self, block: int) -> None:
        for entry_id, entry in reversed([(i, e) for i, e in self.ids if e.block_number > block]):
            retraction = Retracted(
                entry_id=entry_id, block_number=entry.block_number, block_hash=entry.block_hash
            ).with_digest(self.prev)
            self.prev = retraction.digest
            self.client.xadd(self.keys.events, to_fields(retraction))  # type: ignore[arg-type]
        self.ids = [(i, e) for i, e in self.ids if e.block_number <= block]

    def drain(self) -> None:
        for stage in self.stages:
            while stage.step(block_ms=None, count=4):  # many small commits: many trims
                pass

    def reference_table(self) -> dict[str, tuple[str, str]]:
        raw: Any = self.client.xrange(self.keys.peers)
        table = PeerTable()
        for _, entry in effective([(i.decode(), from_fields(f)) for i, f in raw]):
            table.apply(entry)
        return records(table)


def records(table: PeerTable) -> dict[str, tuple[str, str]]:
    return {n: (r.public_key, r.ipv4) for n, r in table.records.items()}


def history(rng: random.Random, start: int, count: int) -> list[tuple[int, ChainEvent]]:
    events: list[tuple[int, ChainEvent]] = []
    for n in range(start, start + count):
        roll = rng.random()
        if roll < 0.6 or n < 3:
            events.append((n, NodeAccessGranted(n, f"node-{n}", f"0x{n:040x}", wg_key(n))))
        elif roll < 0.8:
            victim = rng.randrange(1, n)
            events.append((n, NodeAccessRevoked(victim, f"node-{victim}")))
        else:
            owner = rng.randrange(1, n)
            events.append((n, PublicKeyUpdated(f"0x{owner:040x}", wg_key(1000 + n))))
    return events


def agent(client: redis.Redis, keys: Keys, tmp_path: Path, name: str) -> Agent:
    key_file = tmp_path / f"{name}.key"
    generate_private_key_file(key_file)
    cfg = AgentConfig(
        node_id=name,
        interface="wgsnap0",
        private_key_file=key_file,
        keys=keys,
        config_dir=tmp_path / name,
        file_only=True,
    )
    return Agent(cfg, client, None)


def catch_up(host: Agent) -> None:
    while host.fold(host.read_peers(None)):
        pass


@pytest.fixture
def pair(redis_client: redis.Redis) -> tuple[Network, Network]:
    """The network under test (trimmed) and an untrimmed reference fed the same events."""
    return Network(redis_client, "live", RETENTION), Network(redis_client, "ref", 0)


def feed(pair: tuple[Network, Network], events: list[tuple[int, ChainEvent]]) -> None:
    for net in pair:
        for block, event in events:
            net.append(block, event)
        net.drain()


def test_trimmed_stream_keeps_a_snapshot_and_a_new_agent_starts_from_it(
    pair: tuple[Network, Network], tmp_path: Path, redis_client: redis.Redis
) -> None:
    live, ref = pair
    feed(pair, history(random.Random(7), 1, 60))

    assert redis_client.xlen(live.keys.peers) < redis_client.xlen(ref.keys.peers)
    first_kept = redis_client.xrange(live.keys.peers, count=1)[0][0]  # type: ignore[index]
    through = redis_client.hget(live.keys.snapshot, "id")
    assert through is not None
    assert id_key(first_kept.decode()) <= id_key(through.decode())  # never past the snapshot
    assert not redis_client.exists(ref.keys.snapshot + ":none")

    newcomer = agent(redis_client, live.keys, tmp_path, "new")
    newcomer.bootstrap()
    assert records(newcomer.table) == ref.reference_table()
    assert records(newcomer.table), "the history leaves live peers"


def test_agent_offline_longer_than_the_retention_catches_up_from_the_snapshot(
    pair: tuple[Network, Network], tmp_path: Path, redis_client: redis.Redis
) -> None:
    live, ref = pair
    rng = random.Random(11)
    feed(pair, history(rng, 1, 10))
    host = agent(redis_client, live.keys, tmp_path, "offline")
    host.bootstrap()
    left_at = host.position

    feed(pair, history(rng, 11, 50))  # meanwhile, far more than the retention
    oldest: Any = redis_client.xrange(live.keys.peers, count=1)
    assert oldest[0][0].decode() > left_at, "entries the agent never read were trimmed"

    catch_up(host)
    assert records(host.table) == ref.reference_table()


def test_retraction_in_a_trimmed_stream_is_handled_through_the_snapshot(
    pair: tuple[Network, Network], tmp_path: Path, redis_client: redis.Redis
) -> None:
    live, ref = pair
    rng = random.Random(5)
    feed(pair, history(rng, 1, 40))
    host = agent(redis_client, live.keys, tmp_path, "reorg")
    host.bootstrap()

    for net in pair:
        net.retract_after(30)
        net.drain()
    feed(pair, history(rng, 31, 5))
    catch_up(host)
    assert records(host.table) == ref.reference_table()


def test_redis_reset_makes_the_agent_read_the_new_stream_from_scratch(
    pair: tuple[Network, Network], tmp_path: Path, redis_client: redis.Redis
) -> None:
    live, _ = pair
    feed(pair, history(random.Random(3), 1, 12))
    host = agent(redis_client, live.keys, tmp_path, "reset")
    host.bootstrap()
    assert host.table.records

    redis_client.flushall()  # Redis lost everything; the pipeline starts over
    fresh = Network(redis_client, "live", RETENTION)
    events = [(1, NodeAccessGranted(1, "node-z", "0x" + "9" * 40, wg_key(99)))]
    for block, event in events:
        fresh.append(block, event)
    fresh.drain()

    catch_up(host)
    assert set(host.table.records) == {"node-z"}


def test_snapshot_cadence_survives_restarts(redis_client: redis.Redis) -> None:
    """An ipam stage restarted after every batch still snapshots (and so trims) on time."""
    live = Network(redis_client, "restarts", RETENTION)
    rng = random.Random(17)
    for block, event in history(rng, 1, 60):
        live.append(block, event)
        live.stages[0].step(block_ms=None, count=4)
        ipam = Stage(redis_client, live.keys, live.stages[1].fold, retention=RETENTION)
        ipam.step(block_ms=None, count=4)  # a fresh process every time
    through: Any = redis_client.hget(live.keys.snapshot, "id")
    data: Any = redis_client.hget(live.keys.snapshot, "data")
    after: Any = redis_client.xrange(live.keys.peers, min=f"({through.decode()}")
    assert len(after) <= max(RETENTION, data.count(b'"node_id"')) + 4
    assert redis_client.xlen(live.keys.peers) < 60
