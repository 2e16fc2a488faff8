"""The agent's memory of what it applied, on a real Redis (in-process agents).

The interface is the in-memory twin here (one object standing for the host's
interface across agent restarts, or a fresh one for a rebooted host); the same
stories on real wireguard-go are in tests/e2e/test_agent_resilience.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from factories import network_keys

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.hostfiles import StateFile
from consumers.agent.keys import generate_private_key_file, read_private_key
from consumers.agent.wg import MemoryWireGuard
from shared.devnet.proc import stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import PeerRemove, PeerUpsert, to_fields
from shared.keys import Keys
from shared.logs import log

pytestmark = pytest.mark.integration

POOL = "10.77.0.0/24"


class World:
    """One network's peers stream on a real Redis, and the keys of its members."""

    def __init__(self, client: redis.Redis, tmp: Path) -> None:
        self.client = client
        self.tmp = tmp
        self.keys = network_keys()
        self.public: dict[str, str] = {}

    def key_of(self, node: str) -> str:
        if node not in self.public:
            self.public[node] = generate_private_key_file(self.tmp / f"{node}.key")
        return self.public[node]

    def upsert(self, node: str, n: int, block: int) -> str:
        entry = PeerUpsert(node, self.key_of(node), f"10.77.0.{n}", "0-1", "0-1", block)
        return self.client.xadd(self.keys.peers, to_fields(entry)).decode()  # type: ignore[arg-type,union-attr]

    def remove(self, node: str, block: int) -> str:
        entry = PeerRemove(node, "0-1", "0-1", block)
        return self.client.xadd(self.keys.peers, to_fields(entry)).decode()  # type: ignore[arg-type,union-attr]

    def config(self, **kw: Any) -> AgentConfig:
        self.key_of("self")
        options: dict[str, Any] = {
            "node_id": "self",
            "interface": "wgst0",
            "private_key_file": self.tmp / "self.key",
            "keys": self.keys,
            "policy": Policy(pool=POOL),
            "config_dir": self.tmp / "conf",
            "reconcile_interval": 0.2,
        }
        return AgentConfig(**{**options, **kw})


def peers_in(path: Path) -> set[str]:
    text = path.read_text()
    return {line.split()[-1] for line in text.splitlines() if line.startswith("# node ")}


@pytest.fixture
def world(redis_client: redis.Redis, tmp_path: Path) -> World:
    return World(redis_client, tmp_path)


def history(world: World) -> None:
    """self, b, c, d granted (blocks 1-4), then d revoked (block 5)."""
    for n, node in enumerate(["self", "b", "c", "d"], start=1):
        world.upsert(node, n, n)
    world.remove("d", 5)


def test_a_restart_after_flushall_holds_what_was_applied_until_the_refill_catches_up(
    world: World,
) -> None:
    history(world)
    interface = MemoryWireGuard()
    first = Agent(world.config(), world.client, interface)
    first.start()
    applied = dict(interface.peers)
    assert {p.public_key for p in applied.values()} == {world.public["b"], world.public["c"]}
    world.client.flushall()

    again = Agent(world.config(), world.client, interface)  # the agent restarts, Redis is empty
    again.start()
    assert interface.peers == applied  # an empty Redis is not an empty network
    assert again.hold_block == 5
    status = world.client.hgetall(world.keys.host_status("self"))
    assert b"applied configuration at block 5" in status[b"held"]  # type: ignore[index]

    for n, node in enumerate(["self", "b"], start=1):  # the pipeline refills: blocks 1-2
        world.upsert(node, n, n)
    again.fold(again.read_peers(None))
    assert not again.reconcile("peers")
    assert interface.peers == applied
    assert peers_in(again.cfg.config_path) == {"b", "c"}

    world.upsert("c", 3, 3)  # refilled past block 5 (c revoked meanwhile: block 6)
    world.upsert("d", 4, 4)
    world.remove("d", 5)
    world.remove("c", 6)
    again.fold(again.read_peers(None))
    assert again.reconcile("peers")
    assert {p.public_key for p in interface.peers.values()} == {world.public["b"]}
    assert peers_in(again.cfg.config_path) == {"b"}
    assert again.applied_block == 6


def test_a_rebooted_host_gets_its_peers_back_from_the_state_file_with_redis_down(
    world: World, redis_server: RedisServer
) -> None:
    history(world)
    first = Agent(world.config(), world.client, MemoryWireGuard())
    first.start()
    first.files.close(first.snapshot)
    redis_server.stop()

    rebooted = MemoryWireGuard()  # the interface lost its peers
    dead = redis.Redis.from_url(redis_server.url, socket_connect_timeout=0.2)
    agent = Agent(world.config(), dead, rebooted)
    lines: list[str] = []
    sink = log.add(lambda message: lines.append(str(message)), level="WARNING")
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    try:
        thread.start()
        wait_for(lambda: len(rebooted.peers) == 2, timeout=10, what="peers restored")
        assert {p.public_key for p in rebooted.peers.values()} == {
            world.public["b"],
            world.public["c"],
        }
        assert rebooted.addresses == {"10.77.0.1/24"}
        time.sleep(1.5)  # a few attempts later: still running, still one line
        assert thread.is_alive()
        assert sum("Redis unreachable" in line for line in lines) == 1

        redis_server.start()  # Redis is back, with its data (the same process, restarted)
        history(world)
        world.upsert("e", 7, 7)
        e_key = world.public["e"]
        wait_for(lambda: e_key in rebooted.peers, timeout=20, what="the new peer e")
        assert any("Redis reachable again after" in line for line in lines)
    finally:
        stop.set()
        thread.join(timeout=10)
        log.remove(sink)
    assert not thread.is_alive()


@pytest.mark.parametrize("problem", ["corrupt", "foreign", "loose"])
def test_an_unusable_state_file_is_reported_in_one_line_and_ignored(
    world: World, problem: str
) -> None:
    history(world)
    interface = MemoryWireGuard()
    Agent(world.config(), world.client, interface).start()
    state = world.tmp / "conf" / "wgst0.state"
    if problem == "corrupt":
        state.write_bytes(b'{"v": 1, "network": ')
    elif problem == "foreign":
        other = world.config(interface="wgother0")
        Agent(other, world.client, MemoryWireGuard()).start()
        os.replace(world.tmp / "conf" / "wgother0.state", state)
    else:
        state.chmod(0o644)
    world.client.flushall()
    lines: list[str] = []
    sink = log.add(lambda message: lines.append(str(message)), level="WARNING")
    try:
        again = Agent(world.config(), world.client, interface)
        again.start()
    finally:
        log.remove(sink)
    assert sum("state file ignored" in line for line in lines) == 1
    assert again.hold_block == 0
    assert interface.peers == {}  # as without a state file: an empty Redis fails closed
    assert again.model.fail_closed == "not-live"


class Watching(MemoryWireGuard):
    """The twin, reading the state file back whenever a peer is removed from it."""

    state: StateFile | None = None
    seen: list[set[str]]

    def apply(self, ifname: str, removals: Any, peers: Any) -> None:
        if removals and self.state is not None:
            self.seen.append({p.public_key for p in self.state.load().peers.values()})  # type: ignore[union-attr]
        super().apply(ifname, removals, peers)


def test_a_removal_is_in_the_state_file_before_it_reaches_the_interface(world: World) -> None:
    history(world)
    interface = Watching()
    interface.seen = []
    agent = Agent(world.config(), world.client, interface)
    agent.start()
    interface.state = StateFile(agent.files.config_path.parent, agent.files.state.ident)
    world.remove("c", 6)
    agent.fold(agent.read_peers(None))
    assert agent.reconcile("peers")
    assert interface.seen == [{world.public["b"]}]  # c already gone from the file


def test_a_failed_apply_leaves_the_state_file_equal_to_the_interface(world: World) -> None:
    history(world)
    interface = MemoryWireGuard()
    agent = Agent(world.config(), world.client, interface)
    agent.start()
    before = dict(interface.peers)
    world.upsert("e", 7, 7)
    world.upsert("f", 8, 8)
    interface.fail_keys = {world.public["f"]}
    agent.fold(agent.read_peers(None))
    assert not agent.reconcile("peers")
    assert interface.peers == before
    reloaded = StateFile(agent.files.config_path.parent, agent.files.state.ident).load()
    assert reloaded is not None
    assert {p.public_key for p in reloaded.peers.values()} == set(before)
    assert reloaded.block == 5


def test_a_reset_while_the_agent_waits_in_xread_is_noticed(world: World) -> None:
    """Redis wiped and refilled with another history while the agent is blocked reading:
    entries after its old position are from the new stream, and must not be folded onto
    the old table (c would stay)."""
    for n, node in enumerate(["self", "b", "c"], start=1):
        world.upsert(node, n, n)
    agent = Agent(world.config(reconcile_interval=30.0), world.client, MemoryWireGuard())
    agent.cfg.config_dir.mkdir(parents=True)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        conf = agent.cfg.config_path
        wait_for(lambda: conf.exists() and peers_in(conf) == {"b", "c"}, timeout=10, what="b, c")
        time.sleep(0.3)  # blocked in XREAD now
        pipe = world.client.pipeline(transaction=True)
        pipe.flushall()
        for n, node in enumerate(["self", "b", "d"], start=1):  # a reorg replaced c by d
            key = world.key_of(node)
            entry = PeerUpsert(node, key, f"10.77.0.{n}", "0-1", "0-1", n)
            pipe.xadd(world.keys.peers, to_fields(entry))  # type: ignore[arg-type]
        pipe.execute()
        wait_for(lambda: peers_in(conf) == {"b", "d"}, timeout=10, what="b, d (c gone)")
    finally:
        stop.set()
        thread.join(timeout=10)


def test_an_endpoint_change_reaches_the_other_agents_through_the_stream(world: World) -> None:
    """No polling: with a reconcile interval of a minute only the stream can bring it."""
    for n, node in enumerate(["self", "b"], start=1):
        world.upsert(node, n, n)
    me = Agent(world.config(reconcile_interval=60.0), world.client, None)
    b_cfg = world.config(
        node_id="b",
        interface="wgb0",
        private_key_file=world.tmp / "b.key",
        endpoint="192.0.2.2:51820",
        reconcile_interval=60.0,
    )
    b = Agent(b_cfg, world.client, None)
    stop = threading.Event()
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in (me, b)]
    for thread in threads:
        thread.start()
    try:
        conf = me.cfg.config_path
        wait_for(
            lambda: conf.exists() and "Endpoint = 192.0.2.2:51820" in conf.read_text(),
            timeout=10,
            what="b's first endpoint",
        )
        moved = Agent(
            world.config(
                node_id="b",
                interface="wgb0",
                private_key_file=world.tmp / "b.key",
                endpoint="198.51.100.9:51820",
            ),
            world.client,
            None,
        )
        moved.announcements.publish()  # b moved (a restarted agent announces its new endpoint)
        wait_for(
            lambda: "Endpoint = 198.51.100.9:51820" in conf.read_text(),
            timeout=10,
            what="b's new endpoint",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def test_the_status_says_block_interval_hold_and_handshakes(world: World) -> None:
    history(world)
    interface = MemoryWireGuard()
    agent = Agent(world.config(), world.client, interface)
    agent.start()
    raw: Any = world.client.hgetall(world.keys.host_status("self"))
    status = {k.decode(): v.decode() for k, v in raw.items()}
    assert status["applied_block"] == "5"
    assert float(status["reconcile_interval"]) == 0.2
    assert status["held"] == ""
    assert status["handshake_latest"] == "0"
    assert status["peer_count"] == "2"
    assert status["lag_entries"] == "0"


def test_the_agent_command_waits_for_redis_instead_of_exiting(tmp_path: Path) -> None:
    """``wgchain agent`` started with Redis down: one line, no exit; it works once Redis is up."""
    server = RedisServer()
    server.port = 0
    server.start()
    url, keys = server.url, Keys(31337, "0x" + "77" * 20)
    server.stop()
    key_file = tmp_path / "self.key"
    public = generate_private_key_file(key_file)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    env.update(WGCHAIN_REDIS_URL=url, WGCHAIN_CHAIN_ID="31337", WGCHAIN_CONTRACT=keys.contract)
    env.update(WGCHAIN_POOL=POOL, WGCHAIN_RECONCILE_INTERVAL="0.5")
    argv = [str(Path(sys.executable).parent / "wgchain"), "agent", "--node", "self",
            "--interface", "wgcmd0", "--file-only", "--private-key-file", str(key_file),
            "--config-dir", str(tmp_path / "conf")]  # fmt: skip
    out = tmp_path / "agent.log"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        # the line comes once the interpreter has started (seconds on a loaded machine); then
        # the agent keeps retrying, alive, without repeating it
        wait_for(lambda: "Redis unreachable" in out.read_text() or proc.poll() is not None,
                 timeout=60, what="the agent's line about Redis")  # fmt: skip
        time.sleep(3)
        assert proc.poll() is None, out.read_text()
        assert out.read_text().count("Redis unreachable") == 1
        server.start()
        client = redis.Redis.from_url(url)
        client.xadd(keys.peers, to_fields(PeerUpsert("self", public, "10.77.0.1", "0-1", "0-1", 1)))  # type: ignore[arg-type]
        conf = tmp_path / "conf" / "wgcmd0.conf"
        wait_for(lambda: conf.exists() and "10.77.0.1/24" in conf.read_text(), timeout=30,
                 what="the config file once Redis is up")  # fmt: skip
        client.close()
        assert "Redis reachable again after" in out.read_text()
    finally:
        stop_process(proc, timeout=15)
        server.cleanup()
    assert proc.returncode == 0, out.read_text()[-2000:]


def test_generate_key_says_so_in_a_log_line(tmp_path: Path, redis_server: RedisServer) -> None:
    """With ``--log-json`` the key-generation line is JSON too; the public key only."""
    key_file = tmp_path / "new.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    env.update(WGCHAIN_CHAIN_ID="31337", WGCHAIN_CONTRACT="0x" + "78" * 20)
    argv = [str(Path(sys.executable).parent / "wgchain"), "--log-json", "agent", "--node",
            "self", "--interface", "wggen0", "--file-only", "--generate-key",
            "--private-key-file", str(key_file), "--config-dir", str(tmp_path / "conf"),
            "--redis-url", redis_server.url]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(key_file.exists, timeout=20, what="the key file")
        time.sleep(0.5)
    finally:
        stop_process(proc, timeout=15)
    stderr = proc.stderr.read().decode() if proc.stderr else ""  # type: ignore[union-attr]
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    generated = [doc for doc in lines if "generated" in doc["text"]]
    assert len(generated) == 1
    assert read_private_key(key_file) not in stderr
    assert all(line.startswith("{") for line in stderr.splitlines() if line.strip())


def test_a_removal_is_flushed_to_disk_and_an_addition_is_not(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consumers.agent import hostfiles

    history(world)
    agent = Agent(world.config(), world.client, MemoryWireGuard())
    agent.start()
    flushed: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(hostfiles.os, "fdatasync", lambda fd: (flushed.append(fd), real(fd)))
    world.upsert("e", 7, 7)
    agent.fold(agent.read_peers(None))
    assert agent.reconcile("peers")
    assert flushed == []
    world.remove("e", 8)
    agent.fold(agent.read_peers(None))
    assert agent.reconcile("peers")
    assert len(flushed) == 1


def test_a_spoke_folds_only_itself_and_the_hubs_yet_follows_every_entry(world: World) -> None:
    """Entries about other spokes are looked at for their block only; a retraction still
    rebuilds; the spoke ends where a full fold of the stream puts it."""
    from consumers.agent.desired import PeerTable, desired_state
    from shared.events import Retracted, effective, from_fields

    policy = Policy(pool=POOL, topology="hub", hubs=("hub-1", "hub-2"))
    world.upsert("self", 1, 1)
    world.upsert("hub-1", 2, 2)
    for n in range(3, 40):
        world.upsert(f"spoke-{n}", n, n)
    doomed = world.upsert("hub-2", 40, 41)
    world.remove("spoke-5", 42)
    retraction = Retracted(entry_id=doomed, block_number=41, block_hash="0x" + "11" * 32)
    world.client.xadd(world.keys.peers, to_fields(retraction))  # type: ignore[arg-type]
    world.upsert("spoke-50", 50, 43)
    agent = Agent(world.config(policy=policy), world.client, MemoryWireGuard())
    agent.start()
    assert set(agent.table.records) == {"self", "hub-1"}  # hub-2's grant was retracted
    assert agent.block == 43
    raw: Any = world.client.xrange(world.keys.peers)
    full = PeerTable()
    for _, entry in effective([(i.decode(), from_fields(f)) for i, f in raw]):
        full.apply(entry)
    want = desired_state(full.records, "self", world.public["self"], {}, policy)
    assert agent.desired == want
    assert [p.node_id for p in want.peers] == ["hub-1"]
