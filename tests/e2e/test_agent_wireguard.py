"""Two real agents on real wireguard-go interfaces in network namespaces, fed by a real
``peers`` stream (written directly here: no listener, registry or ipam involved)."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from consumers.agent.keys import generate_private_key_file, read_private_key
from consumers.agent.render import PeerSpec
from consumers.agent.wg import InterfaceState, parse_dump
from shared.devnet.netns import Host, Lab
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import PeerRemove, PeerUpsert, to_fields
from shared.keys import Keys

pytestmark = pytest.mark.e2e

CHAIN_ID = 31337
PORT = 51820
#: Seconds a convergence may take before the test fails.
DEADLINE = 30.0


@dataclass
class Node:
    name: str
    host: Host
    key_file: Path
    public_key: str
    ipv4: str
    conf_dir: Path
    agent: subprocess.Popen[bytes] | None = None

    def state(self) -> InterfaceState:
        return parse_dump(self.host.exec(["wg", "show", self.host.ifname, "dump"]).stdout)

    def peers(self) -> dict[str, PeerSpec]:
        return self.state().peers

    def ifindex(self) -> int:
        out = self.host.exec(["ip", "-j", "link", "show", "dev", self.host.ifname]).stdout
        return int(json.loads(out)[0]["ifindex"])

    def addresses(self) -> set[str]:
        out = self.host.exec(["ip", "-j", "addr", "show", "dev", self.host.ifname]).stdout
        return {f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"]}


@dataclass
class Net:
    lab: Lab
    client: redis.Redis
    keys: Keys
    redis_url: str
    a: Node
    b: Node

    def append(self, entry: PeerUpsert | PeerRemove) -> str:
        return self.client.xadd(self.keys.peers, to_fields(entry)).decode()  # type: ignore[arg-type,union-attr]

    def upsert(self, node: Node, public_key: str | None = None) -> str:
        key = public_key or node.public_key
        return self.append(PeerUpsert(node.name, key, node.ipv4, "0-1", "0-1", 1))

    def status(self, node: Node) -> dict[str, str]:
        raw = self.client.hgetall(self.keys.host_status(node.name))
        return {k.decode(): v.decode() for k, v in raw.items()}  # type: ignore[union-attr]

    def wait(self, condition: Callable[[], object], what: str) -> None:
        try:
            wait_for(condition, timeout=DEADLINE, interval=0.1, what=what)
        except TimeoutError as exc:
            logs = "".join(
                f"\n--- {p.name}\n{p.read_text()[-3000:]}"
                for p in sorted(self.lab.workdir.glob("agent-*.log"))
            )
            raise AssertionError(f"{exc}{logs}") from None


def expected_peer(other: Node) -> PeerSpec:
    return PeerSpec(other.public_key, (f"{other.ipv4}/32",), f"{other.host.underlay_ip}:{PORT}", 25)


@pytest.fixture
def net(lab: Lab, redis_server: RedisServer, tmp_path: Path) -> Iterator[Net]:
    keys = Keys(CHAIN_ID, "0x" + secrets.token_hex(20))
    client = redis.Redis.from_url(redis_server.url)
    nodes = []
    for index, name in enumerate(("a", "b"), start=1):
        host = lab.add_host(name)
        host.start_wireguard()
        key_file = tmp_path / f"{name}.key"
        public = generate_private_key_file(key_file)
        nodes.append(
            Node(f"node-{name}", host, key_file, public, f"10.88.0.{index}", tmp_path / name)
        )
    net = Net(lab, client, keys, redis_server.unix_url, nodes[0], nodes[1])
    try:
        yield net
    finally:
        client.close()


def start_agents(net: Net) -> None:
    for node in (net.a, net.b):
        node.agent = node.host.start_agent(
            node=node.name,
            redis_url=net.redis_url,
            chain_id=net.keys.chain_id,
            contract=net.keys.contract,
            private_key_file=node.key_file,
            listen_port=PORT,
            endpoint=f"{node.host.underlay_ip}:{PORT}",
            config_dir=node.conf_dir,
            env={"WGCHAIN_RECONCILE_INTERVAL": "1", "WGCHAIN_LOG_LEVEL": "DEBUG"},
        )


def test_agents_follow_the_peers_stream(net: Net) -> None:
    a, b = net.a, net.b
    net.upsert(a)
    net.upsert(b)
    start_agents(net)

    # 1. mesh converges: each has the other with its /32 and announced endpoint
    net.wait(lambda: a.peers() == {b.public_key: expected_peer(b)}, "a peers with b")
    net.wait(lambda: b.peers() == {a.public_key: expected_peer(a)}, "b peers with a")
    net.wait(lambda: "10.88.0.1/16" in a.addresses(), "a's address")
    net.wait(lambda: "10.88.0.2/16" in b.addresses(), "b's address")
    net.wait(lambda: a.host.ping(b.ipv4), "ping a -> b through the tunnel")
    assert a.state().public_key == a.public_key
    assert a.state().listen_port == PORT
    wg_pids = {n.name: n.host.wg_proc.pid for n in (a, b)}  # type: ignore[union-attr]
    ifindexes = {n.name: n.ifindex() for n in (a, b)}

    # 2. the config file: 0600, no private key, the peer's key (written by the process's
    # file writer within a second of the apply, not during it: docs/design.md §11.4)
    conf = a.conf_dir / f"{a.host.ifname}.conf"
    net.wait(lambda: conf.exists() and b.public_key in conf.read_text(), "a's config file")
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert read_private_key(a.key_file) not in text
    assert b.public_key in text
    assert "Address = 10.88.0.1/16" in text

    # 3. drift: a peer added by hand is removed by the next reconcile
    stray = generate_private_key_file(a.conf_dir / "stray.key")
    a.host.exec(["wg", "set", a.host.ifname, "peer", stray, "allowed-ips", "10.88.9.9/32"])
    assert stray in a.peers()
    net.wait(lambda: stray not in a.peers(), "the hand-made peer is removed")
    assert b.public_key in a.peers()

    # 4. b's key changes on chain first: b fails closed, a switches to the new key
    new_private = b.key_file.with_name("b.key.new")
    new_public = generate_private_key_file(new_private)
    net.upsert(b, new_public)
    net.wait(lambda: b.peers() == {}, "b fails closed on a key mismatch")
    net.wait(lambda: net.status(b).get("fail_closed") == "key-mismatch", "b reports why")
    # (b has no peers now, so it cannot roam in: the endpoint comes from its announcement)
    b_new = PeerSpec(new_public, (f"{b.ipv4}/32",), f"{b.host.underlay_ip}:{PORT}", 25)
    net.wait(lambda: a.peers() == {new_public: b_new}, "a has b's new key, not the old one")
    # then the host's key file is swapped: b loads it and peers with a again
    os.replace(new_private, b.key_file)
    b.public_key = new_public
    net.wait(lambda: b.state().public_key == new_public, "b's interface uses the new key")
    net.wait(lambda: b.peers() == {a.public_key: expected_peer(a)}, "b peers with a again")
    net.wait(lambda: a.host.ping(b.ipv4), "ping a -> b after the key change")
    assert a.peers() == {new_public: expected_peer(b)}

    # 5. a's key on chain no longer matches a's file: a fails closed too
    other = generate_private_key_file(a.conf_dir / "other.key")
    net.upsert(a, other)
    net.wait(lambda: a.peers() == {}, "a fails closed when the chain names another key")
    net.upsert(a)
    net.wait(lambda: a.peers() == {b.public_key: expected_peer(b)}, "a back once the key matches")

    # 6. b leaves: a drops it and cannot reach it; b (not a member) drops everything
    last = net.append(PeerRemove(b.name, "0-2", "0-2", 2))
    net.wait(lambda: a.peers() == {}, "a drops the removed peer")
    net.wait(lambda: b.peers() == {}, "b fails closed once it is not a member")
    assert not a.host.ping(b.ipv4)
    net.wait(lambda: net.status(b).get("fail_closed") == "not-live", "b reports why")
    net.wait(lambda: net.status(a).get("applied_position") == last, "a reports its position")
    status = net.status(a)
    assert status["lag_entries"] == "0"
    assert status["last_error"] == ""
    assert status["peer_count"] == "0"
    assert json.loads(net.client.get(net.keys.host_announce(a.name)))["endpoint"] == (  # type: ignore[arg-type]
        f"{a.host.underlay_ip}:{PORT}"
    )

    # the interfaces were updated in place all along, never recreated
    for n in (a, b):
        assert n.host.wg_proc is not None
        assert n.host.wg_proc.poll() is None
        assert n.host.wg_proc.pid == wg_pids[n.name]
        assert n.ifindex() == ifindexes[n.name]
        assert n.state().listen_port == PORT
        assert n.agent is not None
        assert n.agent.poll() is None
    assert a.state().public_key == a.public_key
    # no private key ever reached a log
    logs = "".join(p.read_text() for p in net.lab.workdir.glob("agent-*.log"))
    for n in (a, b):
        assert read_private_key(n.key_file) not in logs
