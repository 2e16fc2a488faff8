"""``wgchain status`` on a real chain, Redis, pipeline stages and a file-only agent; and the
bound on Redis round trips with 1,000 hosts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from factories import KEY_B, KEY_C

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from consumers.ipam.allocate import IpamFold
from consumers.registry.fold import FOLD
from consumers.stage import Stage
from consumers.status.snapshot import Snapshot
from producers.listener.lease import Lease
from producers.listener.listener import open_listener
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import PeerUpsert, from_fields, to_fields
from shared.keys import Keys
from shared.settings import load

pytestmark = pytest.mark.integration

WGCHAIN = str(Path(sys.executable).parent / "wgchain")


def status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_") and k != "COLUMNS"}
    return subprocess.run(
        [WGCHAIN, "status", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_reports_the_whole_fleet(
    anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = load(
        {
            "redis_url": redis_server.url,
            "rpc_url": anvil.url,
            "contract": nft.address,
            "chain_id": anvil.chain_id,
            "confirmations": 0,
            "pool": "10.77.0.0/30",  # two usable addresses: later live nodes wait
        },
        environ={},
    )
    keys = cfg.keys()
    client = redis.Redis.from_url(redis_server.url)
    listener = open_listener(cfg, client)
    registry = Stage(client, keys, FOLD)
    ipam = Stage(client, keys, IpamFold.from_settings(cfg))

    def settle() -> None:
        while listener.step():
            pass
        for stage in (registry, ipam):
            while stage.step(block_ms=None):
                pass

    key_file = tmp_path / "a.key"
    key_a = generate_private_key_file(key_file)
    nft.mint(ACCOUNTS[1][0], "node-a", key_a)
    revoke_me = nft.mint(ACCOUNTS[2][0], "node-b", KEY_B).token_id or 0
    nft.mint(ACCOUNTS[3][0], "node-c", KEY_C)  # pool full: pending
    nft.mint(ACCOUNTS[4][0], "node-d", KEY_B)  # same key as node-b: a conflict
    nft.mint(ACCOUNTS[5][0], "node-e", "not\na key")  # an anomaly
    while listener.step():
        pass
    client.xadd(keys.events, {"v": "1", "type": "Nonsense", "data": "{}"})  # a dead letter
    settle()
    assert Lease(client, keys, "listener-x", 10.0).acquire()

    agent = Agent(
        AgentConfig(
            node_id="node-a",
            interface="wgst0",
            private_key_file=key_file,
            keys=keys,
            endpoint="198.51.100.7:51820",
            config_dir=tmp_path / "conf",
            policy=Policy(pool=cfg.pool),
        ),
        client,
        None,
    )
    agent.start()  # file-only: announces, reconciles once and reports
    applied = agent.applied_position

    granted: Any = client.xrange(keys.events)
    logs = [from_fields(f) for _, f in granted[:5]]
    cause = {e.event.node_id: (e.tx_hash, e.block_number) for e in logs}  # type: ignore[union-attr]
    found = {(i.kind, i.reason, i.node, i.cause, i.block) for i in Snapshot(client, keys).issues()}
    assert found == {
        ("conflict", "duplicate-key", "node-d", *cause["node-d"]),  # node-b keeps the key
        ("anomaly", "invalid-key", "node-e", *cause["node-e"]),
        ("pending", "pool-exhausted", "node-c", "", cause["node-c"][1]),
    }

    nft.revoke(revoke_me)  # the agent is not running any more: it falls behind
    settle()
    behind: Any = client.xrange(keys.peers, min=f"({applied}")
    assert behind

    env = {
        "WGCHAIN_REDIS_URL": redis_server.url,
        "WGCHAIN_RPC_URL": anvil.url,
        "WGCHAIN_CHAIN_ID": str(anvil.chain_id),
        "WGCHAIN_CONTRACT": nft.address,
    }
    res = status(env, "--json")
    assert res.returncode == 0, res.stderr
    doc = msgspec.json.decode(res.stdout)

    assert doc["network"] == keys.tag
    lst = doc["listener"]
    assert lst["cursor_block"] == listener.cursor.block  # type: ignore[union-attr]
    assert lst["chain_head"] == anvil.block_number()
    assert lst["lag_blocks"] == anvil.block_number() - listener.cursor.block  # type: ignore[union-attr]
    assert (lst["lease_holder"], lst["lease_fence"]) == ("listener-x", 1)
    assert 0 < lst["lease_ttl_seconds"] <= 10
    assert lst["events"] == client.xlen(keys.events)

    stages = {s["name"]: s for s in doc["stages"]}
    assert stages["registry"]["position"] == registry.position
    assert stages["ipam"]["position"] == ipam.position
    assert stages["registry"]["lag_entries"] == stages["ipam"]["lag_entries"] == 0
    assert stages["registry"]["dead_letters"] == 1

    [host] = doc["hosts"]
    assert host["node"] == "node-a"
    assert host["endpoint"] == "198.51.100.7:51820"
    assert host["applied_position"] == applied
    assert host["lag_entries"] == len(behind)
    assert host["lag_seconds"] >= 0
    assert host["last_error"] == ""
    assert host["peer_count"] == 1  # node-b; node-c has no address, node-d lost the conflict
    assert host["last_apply"] > 0

    counts = doc["counts"]
    assert counts["conflicts"] == 0  # current ones: node-d took over when node-b was revoked
    assert counts["anomalies"] == 1  # node-e's key
    assert [(i["kind"], i["node"]) for i in doc["issues"]] == [
        ("anomaly", "node-e"),
        ("pending", "node-c"),
        ("pending", "node-d"),  # it took over node-b's key, and waits for an address
    ]
    assert counts["pending_allocations"] == 2  # node-c, and node-d once node-b left
    assert counts["dead_letters"] == 1

    # the RPC node down: the head is unknown, everything else is still there
    env["WGCHAIN_RPC_URL"] = f"http://127.0.0.1:{free_port()}"
    human = status(env)
    assert human.returncode == 0, human.stderr
    assert "unknown" in human.stdout
    assert "node-a" in human.stdout
    assert "listener-x" in human.stdout
    assert keys.tag in human.stdout  # the network id, never cut
    assert "wgst0" in human.stdout  # the host's interface ...
    assert host["addresses"].split("/")[0] in human.stdout  # ... and address
    assert max(len(line) for line in human.stdout.splitlines()) > 80  # piped: not cut at 80
    offline = msgspec.json.decode(status(env, "--json").stdout)
    assert offline["listener"]["chain_head"] is None
    assert offline["listener"]["lag_blocks"] is None

    listener.rpc.close()
    client.close()


def test_watch_refreshes_until_stopped(redis_server: RedisServer) -> None:
    keys = Keys(31337, "0x" + "34" * 20)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")},
        "WGCHAIN_REDIS_URL": redis_server.url,
        "WGCHAIN_RPC_URL": f"http://127.0.0.1:{free_port()}",
        "WGCHAIN_CHAIN_ID": "31337",
        "WGCHAIN_CONTRACT": keys.contract,
    }
    proc = subprocess.Popen(
        [WGCHAIN, "status", "--json", "--watch", "0.5"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = msgspec.json.decode(proc.stdout.readline())
        second = msgspec.json.decode(proc.stdout.readline())
        assert second["generated_at"] > first["generated_at"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_watch_keeps_watching_through_a_redis_restart(tmp_path: Path) -> None:
    """Redis goes away and comes back on the same port: one line, then the status resumes."""
    server = RedisServer(port=free_port()).start()
    keys = Keys(31337, "0x" + "34" * 20)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")},
        "WGCHAIN_REDIS_URL": server.url,
        "WGCHAIN_RPC_URL": f"http://127.0.0.1:{free_port()}",
        "WGCHAIN_CHAIN_ID": "31337",
        "WGCHAIN_CONTRACT": keys.contract,
    }
    err = tmp_path / "stderr"
    with open(err, "wb") as errors:
        proc = subprocess.Popen(
            [WGCHAIN, "status", "--json", "--watch", "0.5"],
            env=env, stdout=subprocess.PIPE, stderr=errors, text=True,
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        msgspec.json.decode(proc.stdout.readline())
        server.stop()
        wait_for(lambda: "unreachable" in err.read_text(), timeout=30, what="the outage line")
        time.sleep(1.5)  # several refreshes while Redis is down: still one line
        assert proc.poll() is None, err.read_text()
        server.start()  # same port, same URL
        stamp = time.time()
        while True:  # the status resumes
            doc = msgspec.json.decode(proc.stdout.readline())
            if doc["generated_at"] > stamp:
                break
        lines = [line for line in err.read_text().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"wgchain: Redis at {server.url} unreachable since ")
        assert "Traceback" not in err.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.cleanup()
    assert proc.returncode == 0


def test_watch_on_a_terminal_keeps_watching_too(tmp_path: Path) -> None:
    """Without --json (rich's live display, here on a pipe) an outage is not an exit either."""
    server = RedisServer(port=free_port()).start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")},
        "WGCHAIN_REDIS_URL": server.url,
        "WGCHAIN_RPC_URL": f"http://127.0.0.1:{free_port()}",
        "WGCHAIN_CHAIN_ID": "31337",
        "WGCHAIN_CONTRACT": "0x" + "34" * 20,
    }
    out = tmp_path / "out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            [WGCHAIN, "status", "--watch", "0.5"], env=env, stdout=sink, stderr=sink
        )
    try:
        time.sleep(1)
        server.stop()
        time.sleep(2)
        assert proc.poll() is None, out.read_text()
        server.start()
        time.sleep(1)
        assert proc.poll() is None, out.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        server.cleanup()
    assert proc.returncode == 0
    assert "Traceback" not in out.read_text()


class _Counting(redis.Connection):
    """A real connection that counts what it sends (one send = one round trip)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        super().send_packed_command(command, check_health)


def _populate(client: redis.Redis, keys: Keys, hosts: int, entries: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(hosts):
        node = f"node-{i:04d}"
        applied = entries[i % len(entries)]
        pipe.hset(keys.host_status(node), mapping={"applied_position": applied, "peer_count": 3})
        pipe.set(keys.host_announce(node), f'{{"endpoint": "10.0.{i // 250}.{i % 250}:51820"}}')
    pipe.execute()


def test_status_round_trips_do_not_grow_with_hosts(redis_server: RedisServer) -> None:
    keys = Keys(31337, "0x" + "56" * 20)
    setup = redis.Redis.from_url(redis_server.url)
    entries = [
        setup.xadd(
            keys.peers, to_fields(PeerUpsert(f"n{i}", KEY_B, "10.0.0.1", "0-1", "0-1", 1))
        ).decode()  # type: ignore[union-attr]
        for i in range(50)
    ]
    setup.hset(keys.cursor, mapping={"block": 1, "hash": "0x01", "digest": "00"})  # data
    pool = redis.ConnectionPool.from_url(redis_server.url, connection_class=_Counting)
    client = redis.Redis(connection_pool=pool)
    snapshot = Snapshot(client, keys)

    def round_trips(hosts: int) -> tuple[int, list[Any]]:
        _populate(setup, keys, hosts, entries)
        snapshot.fleet([])  # loads the script once
        _Counting.sent = 0
        fleet = snapshot.fleet([])
        return _Counting.sent, fleet.hosts

    few, small = round_trips(10)
    many, large = round_trips(1000)
    assert len(small) == 10
    assert len(large) == 1000
    assert many == few == 1
    # every host's lag is exact: entries of the peers stream after its applied position
    for i, host in enumerate(large):
        assert host.node == f"node-{i:04d}"
        assert host.lag_entries == len(entries) - 1 - i % len(entries)
        assert host.endpoint == f"10.0.{i // 250}.{i % 250}:51820"
    capped = snapshot.hosts(cap=20)
    assert capped[0].lag_entries == 20
    assert capped[0].lag_capped
    assert not capped[49].lag_capped
    setup.close()
    client.close()
