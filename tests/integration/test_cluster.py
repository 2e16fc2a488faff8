"""The whole pipeline on a local 3-master Redis Cluster: two networks on two masters.

listener, registry and ipam (``run_stages``) and a file-only agent per network, all through
``redis+cluster://``; every multi-key script and transaction stays in its network's slot.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cluster import LocalCluster
from conftest import require

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import wait_for
from shared.errors import ServiceUnavailable
from shared.keys import Keys
from shared.redis_log import connect
from shared.runner import run_stages
from shared.settings import Settings, load

pytestmark = pytest.mark.integration

#: Seconds a convergence may take before the test fails.
DEADLINE = 60.0


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster()
    try:
        local.start()
    except ServiceUnavailable as exc:
        local.cleanup()
        require(False, str(exc))
    try:
        yield local
    finally:
        local.cleanup()


@dataclass
class Network:
    nft: AccessNFT
    cfg: Settings
    keys: Keys
    conf: Path
    public_a: str
    public_b: str

    def config_text(self) -> str:
        return self.conf.read_text() if self.conf.exists() else ""


def _all_keys(keys: Keys) -> list[str]:
    return [
        keys.events, keys.registry, keys.peers, keys.cursor, keys.lease,
        keys.position("registry"), keys.state("ipam"), keys.dead("registry"),
        keys.retry("ipam"), keys.host_announce("node-a"), keys.host_status("node-a"),
    ]  # fmt: skip


def _second_network(anvil: Anvil, first: AccessNFT, cluster: LocalCluster) -> AccessNFT:
    """A second deployment whose keys another master serves (deployments are deterministic)."""
    master = cluster.master_of(cluster.keyslot(Keys(anvil.chain_id, first.address.lower()).events))
    for _ in range(10):
        nft = AccessNFT.deploy(anvil.url, ACCOUNTS[0][1])
        keys = Keys(anvil.chain_id, nft.address.lower())
        if cluster.master_of(cluster.keyslot(keys.events)) != master:
            return nft
    raise AssertionError("ten deployments in a row landed on the same master")


def _run(target: Callable[..., None], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_pipeline_and_agents_converge_on_a_cluster(
    cluster: LocalCluster, anvil: Anvil, nft: AccessNFT, tmp_path: Path
) -> None:
    stop = threading.Event()
    threads: list[threading.Thread] = []
    clients: list[redis.Redis] = []
    networks: list[Network] = []
    try:
        for index, contract in enumerate((nft, _second_network(anvil, nft, cluster))):
            cfg = load(
                {
                    "redis_url": cluster.url,
                    "rpc_url": anvil.url,
                    "contract": contract.address,
                    "chain_id": anvil.chain_id,
                    "confirmations": 0,
                    "poll_interval": 0.05,
                    "pool": "10.66.0.0/24",
                },
                environ={},
            )
            keys = cfg.keys()
            folder = tmp_path / f"net{index}"
            public_a = generate_private_key_file(tmp_path / f"a{index}.key")
            public_b = generate_private_key_file(tmp_path / f"b{index}.key")
            agent_cfg = AgentConfig(
                node_id="node-a",
                interface="wgcl0",
                private_key_file=tmp_path / f"a{index}.key",
                keys=keys,
                policy=Policy(pool=cfg.pool),
                endpoint="192.0.2.1:51820",
                config_dir=folder,
                file_only=True,
                reconcile_interval=0.3,
            )
            client = connect(cluster.url)
            clients.append(client)
            threads.append(_run(run_stages, cfg, stop))
            threads.append(_run(Agent(agent_cfg, client, None).run, stop))
            networks.append(Network(contract, cfg, keys, agent_cfg.config_path, public_a, public_b))

        one, two = networks
        slots = [cluster.keyslot(n.keys.events) for n in networks]
        assert slots[0] != slots[1]
        assert cluster.master_of(slots[0]) != cluster.master_of(slots[1])
        for net, slot in zip(networks, slots, strict=True):
            assert {cluster.keyslot(k) for k in _all_keys(net.keys)} == {slot}

        for net in networks:
            net.nft.mint(ACCOUNTS[1][0], "node-a", net.public_a)
            net.nft.mint(ACCOUNTS[2][0], "node-b", net.public_b)
        # node-b announces its endpoint in network one only (its own key, read with MGET)
        clients[0].set(
            one.keys.host_announce("node-b"), json.dumps({"endpoint": "192.0.2.7:51820"})
        )
        clients[0].xadd(one.keys.events, {"junk": "\n[Peer]"})  # dead-lettered, not fatal

        wait_for(
            lambda: (
                "Endpoint = 192.0.2.7:51820" in one.config_text()
                and all(n.public_b in n.config_text() for n in networks)
            ),
            timeout=DEADLINE,
            what="node-b in both agents' configs, with its announced endpoint in network one",
        )
        one.nft.revoke(2)
        wait_for(
            lambda: one.public_b not in one.config_text(),
            timeout=DEADLINE,
            what="node-b revoked in network one",
        )
        assert two.public_b in two.config_text()
        assert "Endpoint = 192.0.2.7" not in two.config_text()
        wait_for(
            lambda: clients[0].xlen(one.keys.dead("registry")) == 1,
            timeout=DEADLINE,
            what="the junk entry dead-lettered",
        )

        # each network's data lives on its own master, and only there
        for net, slot in zip(networks, slots, strict=True):
            for port in cluster.ports:
                node = cluster.node(port)
                try:
                    held = node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
                finally:
                    node.close()
                assert (int(held) > 0) == (port == cluster.master_of(slot))
            status = clients[0].hgetall(net.keys.host_status("node-a"))
            assert status[b"last_error"] == b""  # type: ignore[index]
            assert status[b"peer_count"] == (b"0" if net is one else b"1")  # type: ignore[index]
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for client in clients:
            client.close()
    assert not any(t.is_alive() for t in threads)
