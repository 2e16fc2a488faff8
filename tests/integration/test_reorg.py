"""Reorgs on a real anvil (``anvil_reorg``) through the real pipeline and a live agent.

Shallow (within the finality margin): nothing orphaned is ever published.
Deep (beyond it): the listener walks back to the common ancestor, appends
retractions and then the canonical entries; registry, peers and a running
agent converge to the canonical chain.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from factories import KEY_A, KEY_B

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from consumers.registry.fold import FOLD as REGISTRY
from consumers.registry.fold import fold
from shared.chain.decode import TOPIC0S
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import LogEntry, Retracted, effective, from_fields
from shared.keys import Keys
from shared.runner import run_stages
from shared.settings import Settings, load

pytestmark = pytest.mark.integration


def settings(anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, margin: int) -> Settings:
    return load(
        {
            "redis_url": redis_server.url,
            "rpc_url": anvil.url,
            "contract": nft.address,
            "chain_id": anvil.chain_id,
            "confirmations": margin,
            "poll_interval": 0.05,
            "pool": "10.66.0.0/24",
        },
        environ={},
    )


class Threads:
    """Threads started by a test; all stopped (and checked stopped) at its end."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=(*args, self.stop), daemon=True)
        thread.start()
        self.threads.append(thread)


@pytest.fixture
def running() -> Iterator[Threads]:
    threads = Threads()
    yield threads
    threads.stop.set()
    for thread in threads.threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads.threads)


def typed(client: redis.Redis, stream: str) -> list[tuple[str, Any]]:
    raw: Any = client.xrange(stream)
    return [(i.decode(), from_fields(f)) for i, f in raw]


def live_nodes(client: redis.Redis, keys: Keys) -> dict[str, str]:
    """node -> key of the live members, from a clean fold of the effective events."""
    state, _ = fold(effective(typed(client, keys.events)))
    return {n: s.public_key for n, s in state.live().items()}


def chain_logs(anvil: Anvil, nft: AccessNFT, to_block: int) -> list[tuple[int, int, str, str]]:
    logs = anvil.rpc(
        "eth_getLogs", [{"address": nft.address, "fromBlock": "0x0", "toBlock": hex(to_block)}]
    )
    return sorted(
        (int(g["blockNumber"], 16), int(g["logIndex"], 16), g["blockHash"], g["transactionHash"])
        for g in logs
        if g["topics"][0] in TOPIC0S
    )


def stream_logs(client: redis.Redis, keys: Keys) -> list[tuple[int, int, str, str]]:
    return sorted(
        (e.block_number, e.log_index, e.block_hash, e.tx_hash)
        for _, e in effective(typed(client, keys.events))
        if isinstance(e, LogEntry)
    )


def mint_call(nft: AccessNFT, to: str, node: str, key: str) -> dict[str, str]:
    """An unsigned mint (anvil signs for its dev accounts) for ``anvil_reorg``."""
    data = nft.contract.encode_abi("mintNodeAccess", args=[to, node, key, ""])
    return {"from": ACCOUNTS[0][0], "to": nft.address, "data": data, "gas": hex(1_000_000)}


def test_shallow_reorg_within_the_margin_publishes_nothing_orphaned(
    anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, running: Threads
) -> None:
    cfg = settings(anvil, nft, redis_server, margin=3)
    keys = cfg.keys()
    client = redis.Redis.from_url(redis_server.url)
    running.start(run_stages, cfg)
    nft.mint(ACCOUNTS[1][0], "node-w", KEY_A)
    anvil.mine(3)
    wait_for(lambda: "node-w" in live_nodes(client, keys), timeout=30, what="node-w appended")

    orphan = nft.mint(ACCOUNTS[2][0], "node-x", KEY_B)  # at the head: inside the margin
    anvil.rpc("anvil_reorg", [2, [[mint_call(nft, ACCOUNTS[3][0], "node-y", KEY_B), 0]]])
    anvil.mine(4)
    head = anvil.block_number()
    wait_for(
        lambda: "node-y" in live_nodes(client, keys), timeout=30, what="node-y appended after it"
    )
    wait_for(
        lambda: stream_logs(client, keys) == chain_logs(anvil, nft, head - 3),
        timeout=30,
        what="stream equal to the chain up to the final block",
    )
    entries = typed(client, keys.events)
    assert not any(isinstance(e, Retracted) for _, e in entries)
    assert all(e.tx_hash != orphan.tx_hash for _, e in entries)
    assert set(live_nodes(client, keys)) == {"node-w", "node-y"}


@pytest.mark.parametrize("margin", [0, 1])
def test_deep_reorg_retracts_and_every_consumer_converges(
    anvil: Anvil,
    nft: AccessNFT,
    redis_server: RedisServer,
    running: Threads,
    tmp_path: Path,
    margin: int,
) -> None:
    cfg = settings(anvil, nft, redis_server, margin=margin)
    keys = cfg.keys()
    client = redis.Redis.from_url(redis_server.url)
    own_public = generate_private_key_file(tmp_path / "a.key")
    agent_cfg = AgentConfig(
        node_id="node-a",
        interface="wgreorg0",
        private_key_file=tmp_path / "a.key",
        keys=keys,
        policy=Policy(pool=cfg.pool),
        config_dir=tmp_path / "conf",
        file_only=True,
        reconcile_interval=0.5,
    )
    running.start(run_stages, cfg)
    running.start(Agent(agent_cfg, client, None).run)
    conf = agent_cfg.config_path

    nft.mint(ACCOUNTS[1][0], "node-a", own_public)
    orphan = nft.mint(ACCOUNTS[2][0], "node-x", KEY_A)
    anvil.mine(3)  # node-x's block is now 4 deep: deeper than the margin
    wait_for(
        lambda: conf.exists() and KEY_A in conf.read_text(),
        timeout=30,
        what="the agent peering with node-x",
    )
    orphan_entry = next(
        i for i, e in typed(client, keys.events) if getattr(e, "tx_hash", "") == orphan.tx_hash
    )

    # Replace the last 4 blocks: node-x's grant is gone, node-y's is in its place.
    anvil.rpc("anvil_reorg", [4, [[mint_call(nft, ACCOUNTS[3][0], "node-y", KEY_B), 0]]])
    anvil.mine(2)
    head = anvil.block_number()

    wait_for(
        lambda: KEY_B in conf.read_text() and KEY_A not in conf.read_text(),
        timeout=30,
        what="the agent peering with node-y instead of node-x",
    )
    wait_for(
        lambda: stream_logs(client, keys) == chain_logs(anvil, nft, head - margin),
        timeout=30,
        what="effective stream equal to the canonical chain",
    )
    events = typed(client, keys.events)
    retractions = [e for _, e in events if isinstance(e, Retracted)]
    assert orphan_entry in {r.entry_id for r in retractions}
    assert all(r.digest_ok() for r in retractions)
    prev = "0" * 64
    for _, entry in events:  # the digest chain runs through the retractions
        assert entry.prev == prev
        assert entry.digest_ok()
        prev = entry.digest
    assert live_nodes(client, keys) == {"node-a": own_public, "node-y": KEY_B}

    registry_live = REGISTRY.load(
        {k.decode(): v for k, v in client.hgetall(keys.state("registry")).items()}  # type: ignore[union-attr]
    ).live()
    assert set(registry_live) == {"node-a", "node-y"}
    peers = typed(client, keys.peers)
    assert any(isinstance(e, Retracted) for _, e in peers)
    live_peers = {getattr(e, "node_id", "") for _, e in effective(peers)}
    assert "node-y" in live_peers
    assert "node-x" not in live_peers
