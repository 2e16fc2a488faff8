"""``wgchain nodes`` and ``wgchain diagnose`` against a real pipeline: anvil, Redis, the
listener and stages stepped by hand, and file-only agents; and the cost of ``nodes``,
which does not grow with the history. (The API's ``/v1/nodes`` filters and
``/v1/nodes/{node}/diagnosis``: tests/integration/test_api.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from factories import KEY_B

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from consumers.ipam.allocate import IpamFold
from consumers.nodes.gather import nodes_report
from consumers.nodes.listing import Filter
from consumers.registry.fold import FOLD
from consumers.stage import Stage
from producers.listener.lease import Lease
from producers.listener.listener import Listener, open_listener
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port
from shared.devnet.redis_server import RedisServer
from shared.events import GENESIS_DIGEST, LogEntry, NodeAccessGranted, PeerUpsert, to_fields
from shared.keys import Keys
from shared.settings import Settings, load

pytestmark = pytest.mark.integration

WGCHAIN = str(Path(sys.executable).parent / "wgchain")


@dataclass
class Net:
    cfg: Settings
    client: redis.Redis
    nft: AccessNFT
    listener: Listener
    stages: list[Stage[Any]]
    env: dict[str, str]
    tmp: Path

    def settle(self) -> None:
        while self.listener.step():
            pass
        for stage in self.stages:
            while stage.step(block_ms=None):
                pass

    def agent(self, node: str, key_file: Path, interval: float = 3600.0) -> Agent:
        """A file-only agent for ``node``: announces, reconciles once and reports."""
        agent = Agent(
            AgentConfig(
                node_id=node,
                interface=f"wgn{node[-1]}",
                private_key_file=key_file,
                keys=self.cfg.keys(),
                endpoint=f"198.51.100.{ord(node[-1]) % 200}:51820",
                config_dir=self.tmp / node,
                policy=Policy(pool=self.cfg.pool),
                reconcile_interval=interval,
            ),
            self.client,
            None,
        )
        agent.start()
        return agent

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [WGCHAIN, *args], env={**self.env, **env}, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    def json(self, *args: str, **env: str) -> Any:
        res = self.run(*args, "--json", **env)
        assert res.returncode == 0, res.stderr
        return msgspec.json.decode(res.stdout)


@pytest.fixture
def net(anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, tmp_path: Path) -> Net:
    cfg = load(
        {
            "redis_url": redis_server.url,
            "rpc_url": anvil.url,
            "contract": nft.address,
            "chain_id": anvil.chain_id,
            "confirmations": 0,
            "pool": "10.77.0.0/30",  # two usable addresses: a third live node waits
        },
        environ={},
    )
    client = redis.Redis.from_url(redis_server.url)
    keys = cfg.keys()
    stages: list[Stage[Any]] = [
        Stage(client, keys, FOLD),
        Stage(client, keys, IpamFold.from_settings(cfg)),
    ]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")},
        "WGCHAIN_REDIS_URL": redis_server.url,
        "WGCHAIN_RPC_URL": anvil.url,
        "WGCHAIN_CHAIN_ID": str(anvil.chain_id),
        "WGCHAIN_CONTRACT": nft.address,
        "WGCHAIN_POOL": cfg.pool,
        "WGCHAIN_MAX_LAG_SECONDS": "3600",  # the world is stepped by hand
        "COLUMNS": "",
    }
    return Net(cfg, client, nft, open_listener(cfg, client), stages, env, tmp_path)


def test_nodes_lists_every_node_with_its_host_and_the_current_issues(net: Net) -> None:
    nft, owners = net.nft, [a for a, _ in ACCOUNTS[1:7]]
    key_a = generate_private_key_file(net.tmp / "a.key")
    key_b = generate_private_key_file(net.tmp / "b.key")  # node-b's host: not its chain key
    nft.mint(owners[0], "node-a", key_a)
    nft.mint(owners[1], "node-b", KEY_B)
    nft.mint(owners[2], "node-c", "")  # no key
    nft.mint(owners[3], "node-d", KEY_B)  # node-b's key: a conflict, node-b keeps it
    nft.revoke(nft.mint(owners[4], "node-e", key_b).token_id or 0)
    nft.mint(owners[5], "node-g", generate_private_key_file(net.tmp / "g.key"))  # pool full
    net.settle()
    assert Lease(net.client, net.cfg.keys(), "listener-x", 3600).acquire()
    net.agent("node-a", net.tmp / "a.key")
    net.agent("node-b", net.tmp / "b.key")

    doc = net.json("nodes")
    rows = {r["node"]: r for r in doc["nodes"]}
    assert sorted(rows) == ["node-a", "node-b", "node-c", "node-d", "node-e", "node-g"]
    assert doc["total"] == 6
    a = rows["node-a"]
    assert (a["live"], a["reason"], a["public_key"], a["owner"]) == (
        True,
        "",
        key_a,
        owners[0].lower(),
    )
    assert a["ipv4"].startswith("10.77.0.")
    assert a["host_state"] == "online"
    assert (rows["node-b"]["host_state"], rows["node-b"]["fail_closed"]) == (
        "online",
        "key-mismatch",
    )
    assert (rows["node-c"]["live"], rows["node-c"]["reason"], rows["node-c"]["host_state"]) == (
        False, "no-key", "absent",
    )  # fmt: skip
    assert rows["node-d"]["reason"] == "key-conflict"
    assert (rows["node-e"]["member"], rows["node-e"]["reason"]) == (False, "revoked")
    assert (rows["node-g"]["live"], rows["node-g"]["ipv4"]) == (True, None)
    assert {(i["kind"], i["reason"], i["node"]) for i in doc["issues"]} == {
        ("conflict", "duplicate-key", "node-d"),
        ("pending", "pool-exhausted", "node-g"),
    }
    assert all(i.get("cause") or i["kind"] == "pending" for i in doc["issues"])  # the log

    def names(*args: str) -> list[str]:
        return [r["node"] for r in net.json("nodes", *args)["nodes"]]

    assert names("--live") == ["node-a", "node-b", "node-g"]
    assert names("--not-live") == ["node-c", "node-d", "node-e"]
    assert names("--host-offline") == ["node-c", "node-d", "node-e", "node-g"]
    assert names("--owner", owners[1]) == ["node-b"]
    assert names("--search", "10.77.0.") == ["node-a", "node-b"]
    assert names("--live", "--host-offline") == ["node-g"]
    assert [i["node"] for i in net.json("nodes", "--live")["issues"]] == ["node-g"]

    table = net.run("nodes")  # piped: nothing cut at 80 columns
    assert table.returncode == 0, table.stderr
    assert net.cfg.keys().tag in table.stdout
    assert key_a in table.stdout
    assert owners[0].lower() in table.stdout
    assert "fail closed: key-mismatch" in table.stdout
    assert "conflict duplicate-key: node node-d" in table.stdout
    assert "pending pool-exhausted: node node-g" in table.stdout
    assert max(len(line) for line in table.stdout.splitlines()) > 80

    bad = net.run("nodes", "--owner", "0x123")
    assert bad.returncode == 2
    assert bad.stderr.startswith("wgchain: --owner: '0x123' is not a 0x address")
    both = net.run("nodes", "--live", "--not-live")  # the last one wins, as with click flags
    assert both.returncode == 0
    wrong = net.run("nodes", WGCHAIN_CONTRACT="0x" + "77" * 20)
    assert wrong.returncode == 3
    assert wrong.stderr.startswith("wgchain: no data for network")
    down = net.run("nodes", WGCHAIN_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert down.returncode == 3
    assert "cannot reach Redis" in down.stderr


def test_diagnose_answers_why_a_node_cannot_connect(net: Net) -> None:
    nft, owners = net.nft, [a for a, _ in ACCOUNTS[1:6]]
    key_a = generate_private_key_file(net.tmp / "a.key")
    key_b = generate_private_key_file(net.tmp / "b.key")
    nft.mint(owners[0], "node-a", key_a)
    minted_b = nft.mint(owners[1], "node-b", KEY_B)  # its host has key_b: fails closed
    nft.mint(owners[2], "node-c", "")
    nft.mint(owners[3], "node-d", KEY_B)
    nft.revoke(nft.mint(owners[4], "node-e", KEY_B).token_id or 0)
    net.settle()
    assert Lease(net.client, net.cfg.keys(), "listener-x", 3600).acquire()
    agent_a = net.agent("node-a", net.tmp / "a.key")
    agent_b = net.agent("node-b", net.tmp / "b.key")

    def verdict(node: str) -> dict[str, Any]:
        found = net.json("diagnose", node)
        assert found["node"] == node
        return dict(found["verdict"])

    b = verdict("node-b")
    assert b["code"] == "key-mismatch"
    assert f"its own key is {key_b}" in b["message"]
    assert KEY_B in b["message"]
    assert f"wgchain contract set-key {key_b}" in b["next"]
    assert verdict("node-c")["code"] == "no-key"
    d = verdict("node-d")
    assert (d["code"], "node-b's (token" in d["message"]) == ("key-conflict", True)
    assert verdict("node-e")["code"] == "revoked"
    typo = verdict("node-aa")
    assert typo["code"] == "not-a-member"
    assert "did you mean node-a" in typo["message"]

    a = net.json("diagnose", "node-a")
    assert a["verdict"]["code"] == "not-carried"  # its only other host fails closed
    assert [(c["node"], c["carries"]) for c in a["carriers"]] == [("node-b", "no")]
    assert a["facts"]["entry"]["kind"] == "upsert"
    assert a["facts"]["membership"]["ipv4"].startswith("10.77.0.")

    # the owner of node-b sets its host's key: node-b goes live with it, its agent carries node-a
    AccessNFT(net.cfg.rpc_url, nft.address, ACCOUNTS[2][1]).set_key(key_b)
    net.settle()
    agent_b.start()
    agent_a.start()
    assert verdict("node-b")["code"] == "ok", minted_b
    a = net.json("diagnose", "node-a")
    assert a["verdict"]["code"] == "ok"
    assert [(c["node"], c["carries"]) for c in a["carriers"]] == [("node-b", "yes")]
    codes = {f["code"]: f["severity"] for f in a["findings"]}
    assert codes["tunnel-unknown"] == "info"  # file-only agents report no handshakes

    screen = net.run("diagnose", "node-a")  # one screen, ending with the verdict
    assert screen.returncode == 0, screen.stderr
    lines = screen.stdout.strip().splitlines()
    assert lines[-2].startswith("verdict: ok — nothing found that keeps node-a from connecting")
    assert lines[-1].startswith("next: ")
    assert net.cfg.keys().tag in screen.stdout

    local = net.json("diagnose", "node-a", "--interface", "wgnosuch0")  # no such interface here
    assert local["facts"]["tunnel"]["error"]
    assert {f["code"] for f in local["findings"]} >= {"tunnel-unreadable"}

    net.agent("node-a", net.tmp / "a.key", interval=0.5)  # reports once, then falls silent
    time.sleep(1.6)  # more than 3 of the reconcile intervals it reports
    stale = net.json("diagnose", "node-a")
    assert stale["verdict"]["code"] == "host-stale"
    offline = net.json("nodes", "--host-offline")["nodes"]
    assert ("node-a", "stale") in [(r["node"], r["host_state"]) for r in offline]

    for args, code in (
        (["diagnose", "../etc"], 2),
        (["diagnose", "node-a", "--interface", "../x"], 2),
        (["diagnose", "node-a", "--interface", "a" * 16], 2),
    ):
        res = net.run(*args)
        assert res.returncode == code, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
        assert res.stderr.startswith("wgchain: ")
    wrong = net.run("diagnose", "node-a", WGCHAIN_CONTRACT="0x" + "77" * 20)
    assert (wrong.returncode, wrong.stderr.startswith("wgchain: no data for network")) == (3, True)


def test_nodes_reads_do_not_grow_with_history(redis_server: RedisServer) -> None:
    """``nodes`` costs the same Redis commands with 10 entries of history as with 20,000."""
    keys = Keys(31337, "0x" + "56" * 20)
    client = redis.Redis.from_url(redis_server.url)
    stage = Stage(client, keys, FOLD)
    prev = GENESIS_DIGEST
    for i in range(3):  # three members, folded by the real stage
        event = NodeAccessGranted(i + 1, f"node-{i}", f"0x{i + 1:040x}", KEY_B if i == 0 else "")
        entry = LogEntry(31337, keys.contract, i + 1, f"0x{i:064x}", "0x01", 0, i, event)
        entry = entry.with_digest(prev)
        prev = entry.digest
        client.xadd(keys.events, to_fields(entry))  # type: ignore[arg-type]
    client.hset(keys.cursor, mapping={"block": 3, "hash": "0x01", "digest": prev})
    while stage.step(block_ms=None):
        pass

    def commands(history: int) -> int:
        pipe = client.pipeline(transaction=False)
        for i in range(history):  # entries every stage has long applied
            pipe.xadd(
                keys.peers, to_fields(PeerUpsert(f"n{i}", KEY_B, "10.0.0.1", "1-0", "1-0", 1))
            )
            pipe.xadd(keys.registry, {"v": "1", "type": "Nonsense", "data": "{}"})
        pipe.execute()
        nodes_report(client, keys, Filter(), 30.0)  # loads the scripts
        client.config_resetstat()
        report = nodes_report(client, keys, Filter(), 30.0)
        assert [r.node for r in report.nodes] == ["node-0", "node-1", "node-2"]
        stats: Any = client.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")

    few = commands(10)
    many = commands(20_000 - 10)
    assert many == few
    client.close()
