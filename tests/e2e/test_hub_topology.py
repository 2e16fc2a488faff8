"""Hub-and-spoke topology on real wireguard-go, fed by the real pipeline (anvil + Redis).

Three hosts in network namespaces: one hub and two spokes. Passes are minted on
anvil; ``listener -> registry -> ipam`` run as in ``wgchain run``; each host runs
``wgchain agent``. The test proves that in ``hub`` topology a spoke reaches the
other spoke only through the hub (and only while the hub forwards), and that
switching mesh -> hub -> mesh (agents restarted with the new setting) reconfigures
every host in place: same wireguard-go process, same interface, same sessions.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import require

from consumers.agent.desired import PeerTable
from consumers.agent.keys import generate_private_key_file
from consumers.agent.wg import parse_dump
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.netns import Host, Lab, available
from shared.devnet.proc import stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import effective, from_fields
from shared.keys import Keys
from shared.redis_log import as_str
from shared.runner import run_stages
from shared.settings import load

pytestmark = pytest.mark.e2e

PORT = 51820
POOL = "10.88.0.0/16"
#: Seconds a convergence may take before the test fails.
DEADLINE = 60.0
HUB, SPOKE_A, SPOKE_B = "hubt-hub", "hubt-a", "hubt-b"


@dataclass
class Node:
    name: str
    host: Host
    key_file: Path
    public_key: str
    ipv4: str = ""
    agent: subprocess.Popen[bytes] | None = None

    def allowed(self) -> dict[str, tuple[str, ...]]:
        """Peer public key -> allowed IPs, as the interface holds them."""
        dump = parse_dump(self.host.exec(["wg", "show", self.host.ifname, "dump"]).stdout)
        return {k: p.allowed_ips for k, p in dump.peers.items()}

    def transfer(self, peer: str) -> tuple[int, int]:
        """(received, sent) bytes of ``peer``: reset only if the peer is removed and re-added."""
        out = self.host.exec(["wg", "show", self.host.ifname, "transfer"]).stdout
        for line in out.splitlines():
            key, rx, tx = line.split("\t")
            if key == peer:
                return int(rx), int(tx)
        raise AssertionError(f"{self.name} has no peer {peer}")

    def ifindex(self) -> int:
        out = self.host.exec(["ip", "-j", "link", "show", "dev", self.host.ifname]).stdout
        return int(json.loads(out)[0]["ifindex"])

    def wg_pid(self) -> int:
        assert self.host.wg_proc is not None
        assert self.host.wg_proc.poll() is None, f"wireguard-go of {self.name} exited"
        return self.host.wg_proc.pid


@dataclass
class Net:
    lab: Lab
    client: redis.Redis
    keys: Keys
    agent_redis_url: str
    hub: Node
    a: Node
    b: Node

    @property
    def nodes(self) -> tuple[Node, Node, Node]:
        return self.hub, self.a, self.b

    def wait(self, condition: Callable[[], object], what: str) -> None:
        try:
            wait_for(condition, timeout=DEADLINE, interval=0.2, what=what)
        except TimeoutError as exc:
            logs = "".join(
                f"\n--- {p.name}\n{p.read_text()[-3000:]}"
                for p in sorted(self.lab.workdir.glob("agent-*.log"))
            )
            raise AssertionError(f"{exc}{logs}") from None

    def start_agents(self, topology: str) -> None:
        """(Re)start every agent with ``topology``; the interfaces are left as they are."""
        env = {
            "WGCHAIN_TOPOLOGY": topology,
            "WGCHAIN_HUBS": HUB if topology == "hub" else "",
            "WGCHAIN_POOL": POOL,
            "WGCHAIN_RECONCILE_INTERVAL": "1",
            "WGCHAIN_LOG_LEVEL": "DEBUG",
        }
        for node in self.nodes:
            if node.agent is not None:
                stop_process(node.agent)
                assert node.agent.returncode == 0, f"agent {node.name} exit {node.agent.returncode}"
            node.agent = node.host.start_agent(
                node=node.name,
                redis_url=self.agent_redis_url,
                chain_id=self.keys.chain_id,
                contract=self.keys.contract,
                private_key_file=node.key_file,
                listen_port=PORT,
                endpoint=f"{node.host.underlay_ip}:{PORT}",
                config_dir=self.lab.workdir / f"{node.name}-conf",
                env=env,
            )

    def forwarding(self, on: bool) -> None:
        value = "1" if on else "0"
        self.hub.host.exec(["sysctl", "-q", "-w", f"net.ipv4.ip_forward={value}"])


def mesh_of(net: Net, node: Node) -> dict[str, tuple[str, ...]]:
    return {o.public_key: (f"{o.ipv4}/32",) for o in net.nodes if o is not node}


def in_mesh(net: Net, node: Node) -> bool:
    return node.allowed() == mesh_of(net, node)


def grew(before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Both byte counters went up: the peer (and its session) lived on in between."""
    return after[0] > before[0] and after[1] > before[1]


def spoke_of(net: Net) -> dict[str, tuple[str, ...]]:
    return {net.hub.public_key: (POOL, f"{net.hub.ipv4}/32")}


@pytest.fixture
def hub_lab() -> Iterator[Lab]:
    """A lab whose namespace and interface names are unique to this test module."""
    ok, reason = available()
    require(ok, f"network-namespace lab unavailable: {reason}")
    tag = secrets.token_hex(2)
    with Lab(prefix=f"wghub{tag}", lab_id=f"h{tag}") as lab:
        yield lab


@pytest.fixture
def net(
    hub_lab: Lab, anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Net]:
    cfg = load(
        {
            "redis_url": redis_server.url,
            "rpc_url": anvil.url,
            "contract": nft.address,
            "chain_id": anvil.chain_id,
            "confirmations": 0,
            "poll_interval": 0.1,
            "pool": POOL,
        },
        environ={},
    )
    stop = threading.Event()
    pipeline = threading.Thread(target=run_stages, args=(cfg, stop), daemon=True)
    pipeline.start()
    client = redis.Redis.from_url(redis_server.url)
    nodes = []
    for name in (HUB, SPOKE_A, SPOKE_B):
        host = hub_lab.add_host(name)
        host.start_wireguard()
        key_file = tmp_path / f"{name}.key"
        nodes.append(Node(name, host, key_file, generate_private_key_file(key_file)))
    try:
        yield Net(hub_lab, client, cfg.keys(), redis_server.unix_url, *nodes)
    finally:
        for node in nodes:
            if node.agent is not None:
                stop_process(node.agent)
        stop.set()
        pipeline.join(timeout=30)
        client.close()


def addresses(net: Net) -> dict[str, str]:
    """node id -> IPv4 address, folded from the peers stream the pipeline wrote."""
    table = PeerTable()
    raw: Any = net.client.xrange(net.keys.peers)
    items = [(as_str(i), from_fields(f)) for i, f in raw]
    for _, entry in effective(items):
        table.apply(entry)
    return {node: record.ipv4 for node, record in table.records.items()}


def replies(log: Path) -> list[int]:
    """icmp_seq numbers of the echo replies a running ``ping`` has printed so far."""
    return [int(m) for m in re.findall(r"bytes from .*icmp_seq=(\d+)", log.read_text())]


def test_hub_topology_routes_spokes_through_the_hub_and_switches_in_place(
    net: Net, nft: AccessNFT
) -> None:
    hub, a, b = net.nodes
    for i, node in enumerate(net.nodes, start=1):
        nft.mint(ACCOUNTS[i][0], node.name, node.public_key)
    net.wait(lambda: len(addresses(net)) == 3, "the pipeline allocates three addresses")
    for node in net.nodes:
        node.ipv4 = addresses(net)[node.name]
    net.forwarding(False)

    # 1. mesh: everyone peers with everyone, the spokes talk directly
    net.start_agents("mesh")
    for node in net.nodes:
        net.wait(partial(in_mesh, net, node), f"{node.name} in the mesh")
    net.wait(lambda: a.host.ping(b.ipv4), "ping a -> b directly (mesh, hub not forwarding)")
    pids = {n.name: n.wg_pid() for n in net.nodes}
    ifindexes = {n.name: n.ifindex() for n in net.nodes}

    # a long-running ping from spoke a to the hub, across both switches
    ping_log = net.lab.workdir / "ping-a-hub.log"
    pinger = a.host.spawn(["ping", "-n", "-i", "0.2", hub.ipv4], log_path=ping_log)
    net.wait(lambda: replies(ping_log), "the long-running ping gets replies")
    before = a.transfer(hub.public_key)

    # 2. mesh -> hub: spokes keep only the hub, which carries the pool
    net.start_agents("hub")
    net.wait(lambda: a.allowed() == spoke_of(net), "spoke a has only the hub")
    net.wait(lambda: b.allowed() == spoke_of(net), "spoke b has only the hub")
    net.wait(lambda: hub.allowed() == mesh_of(net, hub), "the hub has both spokes")
    assert b.public_key not in a.allowed()
    switched_at = max(replies(ping_log))

    # spoke a reaches spoke b only through the hub, and only while the hub forwards
    assert not a.host.ping(b.ipv4, count=2), "a reached b although the hub does not forward"
    net.forwarding(True)
    net.wait(lambda: a.host.ping(b.ipv4), "ping a -> b through the forwarding hub")
    assert b.host.ping(a.ipv4, count=3, timeout_s=2)
    net.forwarding(False)
    assert not a.host.ping(b.ipv4, count=2), "a reached b after forwarding was turned off"

    # the switch happened in place: same process, same interface, same session with the hub
    net.wait(lambda: max(replies(ping_log)) > switched_at, "the ping goes on after the switch")
    assert pinger.poll() is None
    after = a.transfer(hub.public_key)
    assert grew(before, after), "the hub peer was re-created on a"
    for node in net.nodes:
        assert node.wg_pid() == pids[node.name]
        assert node.ifindex() == ifindexes[node.name]

    # 3. hub -> mesh: the spokes peer directly again (the hub still does not forward)
    before = a.transfer(hub.public_key)
    net.start_agents("mesh")
    for node in net.nodes:
        net.wait(partial(in_mesh, net, node), f"{node.name} back in the mesh")
    net.wait(lambda: a.host.ping(b.ipv4), "ping a -> b directly again")
    switched_at = max(replies(ping_log))
    net.wait(lambda: max(replies(ping_log)) > switched_at, "the ping goes on after switching back")
    after = a.transfer(hub.public_key)
    assert grew(before, after), "the hub peer was re-created on a"
    for node in net.nodes:
        assert node.wg_pid() == pids[node.name]
        assert node.ifindex() == ifindexes[node.name]
        assert node.agent is not None
        assert node.agent.poll() is None
    stop_process(pinger)
