"""Redis killed under the running pipeline: restarted from its AOF, and restarted empty.

The whole pipeline runs as real processes (``wgchain listen``, ``registry``, ``ipam``
and a file-only ``wgchain agent``) against a real anvil and a real ``redis-server``
that the test SIGKILLs mid-run and starts again on the same port. Nobody touches the
processes: they must notice the outage (a log line), reconnect on their own, never
exit, and end with the events stream equal to an independent ``eth_getLogs`` scan,
the derived streams equal to a clean fold of it, and the agent's config file holding
exactly the live members. With the data wiped, the agent must keep its last applied
configuration until the rebuilt peers stream has caught up with it.

Then the same rules step by step, in-process on a real Redis: the agent's hold, a
stage idle past data that Redis restored under older ids, and the reconnect line.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from conftest import require
from factories import wg_key
from tenacity import stop_after_attempt
from test_lease import complete, positions, scan
from test_snapshots import Network
from test_snapshots import wg_key as numbered_key

from consumers.agent import hold as hold_module
from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from consumers.ipam import allocate
from consumers.registry import fold as registry_fold
from consumers.registry.fold import FOLD as REGISTRY
from consumers.stage import Stage
from shared.contract.client import AccessNFT
from shared.devnet.anvil import Anvil
from shared.devnet.proc import stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import ServiceUnavailable
from shared.events import (
    ChainEvent,
    LogEntry,
    NodeAccessGranted,
    NodeAccessRevoked,
    effective,
    from_fields,
    to_fields,
)
from shared.keys import Keys
from shared.logs import log
from shared.redis_log import START, redis_retry
from shared.settings import load

pytestmark = pytest.mark.integration

WGCHAIN = Path(sys.executable).parent / "wgchain"
POOL = "10.79.0.0/24"
#: What a process logs once when Redis calls start failing (``shared.health.Outage``).
RETRY_LINE = re.compile(r"Redis unreachable \((ConnectionError|TimeoutError)")
#: What a process logs once when Redis answers again.
RECONNECT_LINE = "Redis reachable again after"
#: Seconds to wait for the pipeline to settle (slow shared CI machines).
SETTLE = 90


def owner(name: str) -> str:
    """A distinct owner address per node (keys belong to owners)."""
    return "0x" + hashlib.sha256(f"owner-{name}".encode()).hexdigest()[:40]


@dataclass
class Stack:
    """The pipeline's processes (each logging to its own file), the chain and Redis."""

    tmp: Path
    server: RedisServer
    anvil: Anvil
    nft: AccessNFT
    keys: Keys
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    minted: dict[str, int] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)

    @property
    def config_file(self) -> Path:
        return self.tmp / "wg" / "wgrl0.conf"

    def spawn(self, name: str, *args: str) -> None:
        with open(self.tmp / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [str(WGCHAIN), *args], env=self.env, stdout=out, stderr=out
            )

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def exited(self) -> dict[str, int]:
        """Processes that are no longer running, with their exit codes."""
        return {n: rc for n, p in self.procs.items() if (rc := p.poll()) is not None}

    def mint(self, name: str) -> None:
        self.minted[name] = self.nft.mint(owner(name), name, wg_key(name)).token_id or 0

    def mint_many(self, prefix: str, count: int) -> None:
        for i in range(count):
            self.mint(f"{prefix}-{i}")

    def retried(self, name: str) -> bool:
        """True once process ``name`` logged a retried Redis call."""
        return RETRY_LINE.search(self.log(name)) is not None

    def revoke(self, name: str) -> None:
        self.nft.revoke(self.minted[name])
        self.revoked.add(name)

    def expected_peers(self) -> dict[str, str]:
        """node id -> public key of every live member except the agent's own node."""
        live = set(self.minted) - self.revoked - {"self"}
        return {name: wg_key(name) for name in live}

    def config_peers(self) -> dict[str, str]:
        """node id -> public key of the peers in the agent's config file."""
        try:
            text = self.config_file.read_text()
        except FileNotFoundError:
            return {}
        return dict(re.findall(r"^# node (\S+)\nPublicKey = (\S+)$", text, re.M))

    def kill_redis(self) -> None:
        """SIGKILL redis-server (no shutdown, no final AOF rewrite)."""
        assert self.server.proc is not None
        os.kill(self.server.proc.pid, signal.SIGKILL)
        self.server.proc.wait(timeout=10)
        self.server.proc = None

    def restart_redis(self) -> None:
        """Start redis-server again on the same port, in the same folder."""
        self.server.start()


@pytest.fixture(params=[True, False], ids=["aof", "wiped"])
def stack(request: Any, tmp_path: Path, anvil: Anvil, nft: AccessNFT) -> Iterator[Stack]:
    """The pipeline on a Redis with (``aof``) or without (``wiped``) persistence."""
    try:
        server = RedisServer(appendonly=request.param).start()
    except ServiceUnavailable as exc:
        require(False, str(exc))
        raise
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    env.update(
        WGCHAIN_REDIS_URL=server.url,
        WGCHAIN_RPC_URL=anvil.url,
        WGCHAIN_CONTRACT=nft.address,
        WGCHAIN_CHAIN_ID=str(anvil.chain_id),
        WGCHAIN_CONFIRMATIONS="0",
        WGCHAIN_POLL_INTERVAL="0.2",
        WGCHAIN_LEASE_TTL="3",
        WGCHAIN_POOL=POOL,
        WGCHAIN_RECONCILE_INTERVAL="1",
    )
    keys = Keys(anvil.chain_id, nft.address.lower())
    stack = Stack(tmp_path, server, anvil, nft, keys, env)
    try:
        own_key = generate_private_key_file(tmp_path / "self.key")
        stack.minted["self"] = nft.mint(owner("self"), "self", own_key).token_id or 0
        stack.spawn("listen", "listen")
        stack.spawn("registry", "registry")
        stack.spawn("ipam", "ipam")
        stack.spawn(
            "agent", "agent", "--node", "self", "--interface", "wgrl0", "--file-only",
            "--endpoint", "127.0.0.1:51820", "--private-key-file", str(tmp_path / "self.key"),
            "--config-dir", str(tmp_path / "wg"),
        )  # fmt: skip
        yield stack
    finally:
        for proc in stack.procs.values():
            stop_process(proc, timeout=15)
        server.cleanup()


def _entries(client: redis.Redis, stream: str) -> list[tuple[str, Any]]:
    raw: Any = client.xrange(stream)
    return [(i.decode(), from_fields(f)) for i, f in raw]


def assert_clean_fold(client: redis.Redis, keys: Keys) -> None:
    """The registry and peers streams equal a clean fold of the events stream."""
    events = effective(_entries(client, keys.events))
    registry = effective(_entries(client, keys.registry))
    _, expected_registry = registry_fold.fold((i, e) for i, e in events if isinstance(e, LogEntry))
    assert [msgspec.json.encode(e) for _, e in registry] == [
        msgspec.json.encode(e) for e in expected_registry
    ]
    ipam = allocate.IpamFold.from_settings(load({"pool": POOL}, environ={}))
    _, expected_peers = allocate.fold(registry, ipam=ipam)
    peers = effective(_entries(client, keys.peers))
    assert [msgspec.json.encode(e) for _, e in peers] == [
        msgspec.json.encode(e) for e in expected_peers
    ]


def converged(stack: Stack, client: redis.Redis) -> bool:
    """Events equal the chain, and the agent's file holds exactly the live members."""
    return complete(client, stack.keys, stack.anvil.url) and (
        stack.config_peers() == stack.expected_peers()
    )


class Sampler:
    """Reads the agent's config file in a thread, to check what it held at every moment."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.samples: list[dict[str, str]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.02):
            self.samples.append(self.stack.config_peers())

    def stop(self) -> list[dict[str, str]]:
        self.done.set()
        self.thread.join(timeout=10)
        return self.samples


def test_redis_killed_and_restarted_mid_run(stack: Stack) -> None:
    """AOF: the data is kept. Wiped: all of it is rebuilt from the chain. No human either way."""
    wiped = not stack.server.appendonly
    listener = stack.procs["listen"]
    client = redis.Redis.from_url(stack.server.url)
    try:
        stack.mint_many("before", 6)
        wait_for(lambda: converged(stack, client), timeout=SETTLE, what="the first peers")
        applied = stack.config_peers()
        first: Any = client.xrange(stack.keys.events, count=1)
        sampler = Sampler(stack)
        stack.kill_redis()

        minter = threading.Thread(target=stack.mint_many, args=("during", 8), daemon=True)
        minter.start()  # the chain goes on while Redis is down
        for name in ("listen", "registry", "ipam", "agent"):
            wait_for(
                functools.partial(stack.retried, name),
                timeout=SETTLE,
                what=f"{name} to report that Redis is unreachable",
            )
        minter.join(timeout=SETTLE)
        assert not stack.exited()

        if wiped:  # hold the refill back: the agent meets an empty Redis for a while
            os.kill(listener.pid, signal.SIGSTOP)
        stack.restart_redis()
        if wiped:
            announced = stack.keys.host_announce("self")
            for _ in range(2):  # twice: a whole agent loop (timer reconcile included) ran
                wait_for(lambda: client.exists(announced), timeout=SETTLE, what="an announce")
                client.delete(announced)
            assert client.xlen(stack.keys.peers) == 0
            assert stack.config_peers() == applied  # an empty Redis is not an empty network
            os.kill(listener.pid, signal.SIGCONT)
        stack.mint_many("after", 4)
        samples = sampler.stop()
        stack.revoke("before-0")
        stack.revoke("during-1")
        wait_for(lambda: converged(stack, client), timeout=SETTLE, what="the pipeline to converge")

        assert not stack.exited(), {n: stack.log(n)[-2000:] for n in stack.exited()}
        for name in stack.procs:  # each one said so when Redis answered again
            assert RECONNECT_LINE in stack.log(name).split("Redis unreachable (")[-1], name
        assert samples
        assert all(s.items() >= applied.items() for s in samples)
        got = positions(client, stack.keys)
        assert got == scan(stack.anvil.url, stack.keys.contract)
        assert len(got) == len(set(got))
        assert_clean_fold(client, stack.keys)
        if wiped:  # the listener started over at its start block; the agent read anew
            assert stack.log("listen").count("appending from block 0") == 2
            assert "Redis was reset" in stack.log("agent")
        else:  # the AOF kept everything: nothing was read again
            assert client.xrange(stack.keys.events, count=1) == first
            assert stack.log("listen").count("appending from block 0") == 1
            assert "Redis was reset" not in stack.log("agent")
        for name, proc in stack.procs.items():  # and SIGTERM still ends each one cleanly
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, stack.log(name)[-2000:]
    finally:
        if listener.poll() is None:
            os.kill(listener.pid, signal.SIGCONT)
        client.close()


# --- the agent's hold, step by step (in-process agent, real Redis, real stages) ----------


def numbered_owner(n: int) -> str:
    return f"0x{n:040x}"


@pytest.fixture
def held(redis_client: redis.Redis, tmp_path: Path) -> tuple[Agent, list[tuple[int, ChainEvent]]]:
    """An agent that applied the whole history (own node, five others, one revoked
    last); then Redis lost everything."""
    key_file = tmp_path / "self.key"
    own_key = generate_private_key_file(key_file)
    events: list[tuple[int, ChainEvent]] = [
        (1, NodeAccessGranted(1, "self", numbered_owner(1), own_key))
    ]
    for n in range(2, 7):
        events.append((n, NodeAccessGranted(n, f"node-{n}", numbered_owner(n), numbered_key(n))))
    events.append((7, NodeAccessRevoked(3, "node-3")))
    net = Network(redis_client, "hold", 0)
    for block, event in events:
        net.append(block, event)
    net.drain()
    cfg = AgentConfig(
        node_id="self",
        interface="wghold0",
        private_key_file=key_file,
        keys=net.keys,
        config_dir=tmp_path / "wg",
        file_only=True,
        policy=Policy(pool="10.5.0.0/24"),  # the pool of test_snapshots' Network
    )
    host = Agent(cfg, redis_client, None)
    host.start()
    assert "# node node-6" in cfg.config_path.read_text()
    redis_client.flushall()
    return host, events


def test_agent_holds_its_configuration_until_the_refilled_stream_catches_up(
    held: tuple[Agent, list[tuple[int, ChainEvent]]], redis_client: redis.Redis
) -> None:
    host, events = held
    applied = host.cfg.config_path.read_text()
    refill = Network(redis_client, "hold", 0)  # the pipeline, writing the history again

    for block, event in events[:3]:
        refill.append(block, event)
    refill.drain()
    host.fold(host.read_peers(None))
    assert set(host.table.records) == {"self", "node-2", "node-3"}  # a clean fold from scratch
    assert not host.reconcile("peers")
    assert host.cfg.config_path.read_text() == applied  # tunnels to node-4..6 stay up

    for block, event in events[3:]:
        refill.append(block, event)
    refill.drain()
    host.fold(host.read_peers(None))
    assert host.reconcile("peers")
    assert host.cfg.config_path.read_text() == applied  # the same network, rebuilt


def test_a_hold_ends_when_the_stream_stays_short_of_the_applied_block(
    held: tuple[Agent, list[tuple[int, ChainEvent]]],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Those blocks are gone from the chain (a deep reorg meanwhile): no waiting forever.

    An empty stream is not such a case: the pipeline has not refilled anything yet.
    """
    host, events = held
    applied = host.cfg.config_path.read_text()
    monkeypatch.setattr(hold_module, "HOLD_QUIET_SECONDS", 0.0)  # "long" quiet, at once
    host.fold(host.read_peers(None))
    assert not host.table.records  # the reset was seen on an empty stream
    assert not host.reconcile("timer")
    assert host.cfg.config_path.read_text() == applied

    refill = Network(redis_client, "hold", 0)
    for block, event in events[:3]:
        refill.append(block, event)
    refill.drain()
    host.fold(host.read_peers(None))
    assert host.reconcile("timer")
    assert "# node node-4" not in host.cfg.config_path.read_text()


def test_an_idle_stage_notices_that_redis_came_back_with_older_data(
    redis_client: redis.Redis,
) -> None:
    """Input at ids before the stage's in-memory position (Redis restored from older data,
    or its clock behind): the stage reloads while idle, without waiting for new input."""
    net = Network(redis_client, "idle", 0)
    for n in range(1, 4):
        net.append(n, NodeAccessGranted(n, f"node-{n}", numbered_owner(n), numbered_key(n)))
    net.drain()
    registry = net.stages[0]
    assert registry.position != START
    events: Any = redis_client.xrange(net.keys.events)
    redis_client.flushall()
    for n, (_, fields) in enumerate(events, 1):
        redis_client.xadd(net.keys.events, fields, id=f"{n}-0")

    assert registry.step(block_ms=None) == 0  # nothing after its position: it checks
    assert registry.position == START
    assert registry.step(block_ms=None) == 3
    assert redis_client.xlen(net.keys.registry) == 3


def test_a_retried_call_logs_the_outage_once_and_its_end_once() -> None:
    """Not one line per attempt: one when Redis stops answering, one when it answers again."""
    lines: list[str] = []
    sink = log.add(lambda message: lines.append(str(message)), level="WARNING")
    failures = iter([True, True, True, False])

    def call() -> str:
        redis_retry(lambda: None)  # a nested retried call that succeeds at once
        if next(failures):
            raise redis.ConnectionError("Connection refused")
        return "ok"

    try:
        assert redis_retry(call) == "ok"
    finally:
        log.remove(sink)
    assert len([line for line in lines if "Redis unreachable (" in line]) == 1
    back = [line for line in lines if RECONNECT_LINE in line]
    assert len(back) == 1
    assert "(3 failed attempts)" in back[0]


def test_a_stage_outlives_an_outage_longer_than_its_retries_and_resumes(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``redis_retry`` gives up on a call; the stage's loop does not: it waits, reloads, goes on."""
    client = redis.Redis.from_url(redis_server.url)
    keys = Keys(31337, "0x" + "ab" * 20, prefix="gone")
    stop = threading.Event()
    monkeypatch.setattr(redis_retry, "stop", stop_after_attempt(2))  # give up at once
    stage = Stage(client, keys, REGISTRY)
    thread = threading.Thread(target=stage.run, args=(stop,), daemon=True)
    thread.start()
    try:
        redis_server.stop()
        time.sleep(3)  # several calls gave up meanwhile
        assert thread.is_alive()
        redis_server.start()
        entry = LogEntry(31337, keys.contract, 1, "0x" + "00" * 32, "0x" + "11" * 32, 0, 0,
                         NodeAccessGranted(1, "node-a", numbered_owner(1), numbered_key(1)))  # fmt: skip
        client.xadd(keys.events, to_fields(entry.with_digest("")))
        wait_for(lambda: client.xlen(keys.registry) == 1, timeout=30, what="the stage resumed")
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
        client.close()
    assert not thread.is_alive()
