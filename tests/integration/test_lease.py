"""Horizontal listeners against a real anvil and a real Redis: leases, fencing, spreading.

Several ``wgchain listen`` processes run for the same network(s); the events stream
is compared with an independent ``eth_getLogs`` scan after SIGKILL and SIGSTOP of
the leader, and the fence is shown to stop a paused leader's append in-process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from eth_utils.crypto import keccak

from producers.listener.lease import Lease
from producers.listener.listener import Listener, ListenerConfig
from producers.listener.store import ListenerStore
from shared.chain.rpc import RpcClient
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import Fenced
from shared.events import LogEntry, from_fields
from shared.keys import Keys

pytestmark = pytest.mark.integration

WGCHAIN = Path(sys.executable).parent / "wgchain"
KEY = "A" * 43 + "="
TOPICS = [
    "0x" + keccak(text=signature).hex()
    for signature in (
        "NodeAccessGranted(uint256,string,address,string)",
        "NodeAccessRevoked(uint256,string)",
        "NodeAccessTransferred(uint256,address,address)",
        "PublicKeyUpdated(address,string)",
    )
]
#: Lease TTL of the test listeners (seconds): takeover comes within about this long.
TTL = "2"


# --- helpers (also used by test_heads) ---------------------------------------------------


def scan(url: str, contract: str) -> list[tuple[int, int, str]]:
    """Independent scan of the four events of ``contract``: (block, log index, tx hash)."""
    query = {"address": contract, "topics": [TOPICS], "fromBlock": "0x0", "toBlock": "latest"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [query]}
    logs = requests.post(url, json=body, timeout=30).json()["result"]
    return sorted(
        (int(x["blockNumber"], 16), int(x["logIndex"], 16), x["transactionHash"].lower())
        for x in logs
    )


def positions(client: redis.Redis, keys: Keys) -> list[tuple[int, int, str]]:
    """(block, log index, tx hash) of every entry of the events stream, in stream order."""
    raw: Any = client.xrange(keys.events)
    out = []
    for _, fields in raw:
        entry = from_fields(fields)
        assert isinstance(entry, LogEntry)
        out.append((entry.block_number, entry.log_index, entry.tx_hash))
    return out


def complete(client: redis.Redis, keys: Keys, url: str) -> bool:
    """True once the stream equals the scan (so also ordered and duplicate-free)."""
    return positions(client, keys) == scan(url, keys.contract)


class Listeners:
    """``wgchain listen`` subprocesses we started, each with its own log file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        with open(self.log_path(name), "ab") as out:
            proc = subprocess.Popen(
                [str(WGCHAIN), "listen", *args],
                env={**self.env, **env, "WGCHAIN_LISTENER_ID": name},
                stdout=out,
                stderr=out,
            )
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.tmp_path / f"{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            stop_process(proc)


@contextlib.contextmanager
def listener_group(
    tmp_path: Path, redis_server: RedisServer, anvil: Anvil, nft: AccessNFT
) -> Iterator[Listeners]:
    """Listeners for ``nft`` (no confirmations, short lease TTL), all stopped at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    env.update(
        WGCHAIN_REDIS_URL=redis_server.url,
        WGCHAIN_RPC_URL=anvil.url,
        WGCHAIN_CONTRACT=nft.address,
        WGCHAIN_CONFIRMATIONS="0",
        WGCHAIN_MAX_BLOCK_RANGE="5",
        WGCHAIN_POLL_INTERVAL="0.2",
        WGCHAIN_LEASE_TTL=TTL,
    )
    group = Listeners(tmp_path, env)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def listeners(
    tmp_path: Path, redis_server: RedisServer, anvil: Anvil, nft: AccessNFT
) -> Iterator[Listeners]:
    with listener_group(tmp_path, redis_server, anvil, nft) as group:
        yield group


def holder(client: redis.Redis, keys: Keys) -> str | None:
    """Listener id in the lease (tokens are ``<fence>:<listener id>``), or None."""
    raw: Any = client.get(keys.lease)
    return raw.decode().split(":", 1)[1] if raw else None


def mint_in_background(nft: AccessNFT, count: int, prefix: str) -> threading.Thread:
    """Mint ``count`` tokens, one block each, in a thread (the chain keeps moving)."""

    def mint_all() -> None:
        for i in range(count):
            nft.mint(ACCOUNTS[1 + i % 5][0], f"{prefix}-{i}", KEY)

    thread = threading.Thread(target=mint_all, daemon=True)
    thread.start()
    return thread


# --- tests --------------------------------------------------------------------------------


def test_sigkill_of_the_leader_hands_over_with_a_complete_stream(
    listeners: Listeners, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    keys = Keys(anvil.chain_id, nft.address.lower())
    for name in ("L0", "L1", "L2"):
        listeners.spawn(name)
    first = wait_for(lambda: holder(redis_client, keys), timeout=20, what="a leader")
    minter = mint_in_background(nft, 30, "node")
    wait_for(lambda: len(positions(redis_client, keys)) >= 5, timeout=30, what="some entries")
    os.kill(listeners.procs[first].pid, signal.SIGKILL)  # mid-stream: the mints go on
    listeners.procs[first].wait(timeout=10)
    second = wait_for(
        lambda: (h := holder(redis_client, keys)) != first and h, timeout=20, what="takeover"
    )
    minter.join(timeout=60)
    wait_for(lambda: complete(redis_client, keys, anvil.url), timeout=30, what="complete stream")

    got = positions(redis_client, keys)
    assert len(got) == len(set(got)) == 30
    took = {name: listeners.log(name).count("took the lease") for name in ("L0", "L1", "L2")}
    assert took[first] == 1
    assert took[second] == 1
    assert sum(took.values()) == 2
    fence: Any = redis_client.get(keys.fence)
    assert int(fence) == 2  # the takeover got a new fencing number


def test_sigstopped_leader_appends_nothing_after_a_takeover_and_steps_down(
    listeners: Listeners, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    keys = Keys(anvil.chain_id, nft.address.lower())
    listeners.spawn("L0")
    wait_for(lambda: holder(redis_client, keys) == "L0", timeout=20, what="L0 leads")
    listeners.spawn("L1")
    nft.mint(ACCOUNTS[1][0], "before", KEY)
    wait_for(lambda: complete(redis_client, keys, anvil.url), timeout=20, what="first entry")

    old = listeners.procs["L0"]
    os.kill(old.pid, signal.SIGSTOP)
    wait_for(lambda: holder(redis_client, keys) == "L1", timeout=20, what="L1 takes over")
    minter = mint_in_background(nft, 6, "paused")  # blocks the paused leader has not seen
    os.kill(old.pid, signal.SIGCONT)
    minter.join(timeout=60)
    wait_for(lambda: "stepping down" in listeners.log("L0"), timeout=20, what="L0 steps down")
    wait_for(lambda: complete(redis_client, keys, anvil.url), timeout=30, what="complete stream")

    got = positions(redis_client, keys)
    assert len(got) == len(set(got)) == 7
    assert holder(redis_client, keys) == "L1"
    assert old.poll() is None  # it stands by, it did not crash


def test_fence_stops_a_paused_leader_whose_cursor_is_still_current(
    anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    """The leader resumes with a cursor nobody moved: only the fence can stop its append."""
    keys = Keys(anvil.chain_id, nft.address.lower())
    cfg = ListenerConfig(chain_id=anvil.chain_id, contract=nft.address, confirmations=0)

    def listener() -> Listener:
        return Listener(RpcClient([anvil.url]), ListenerStore(redis_client, keys), cfg)

    old, new = listener(), listener()
    old_lease = Lease(redis_client, keys, "old", 60)
    new_lease = Lease(redis_client, keys, "new", 60)
    assert old_lease.acquire()
    assert not new_lease.acquire()
    old.fence = old_lease.fence
    nft.mint(ACCOUNTS[1][0], "one", KEY)
    while old.step():
        pass
    assert len(positions(redis_client, keys)) == 1

    nft.mint(ACCOUNTS[2][0], "two", KEY)
    # The old leader "pauses" past its TTL (fast-forwarded: the lease expires now).
    redis_client.pexpire(keys.lease, 1)
    wait_for(new_lease.acquire, timeout=10, what="the new listener takes the lease")
    with pytest.raises(Fenced, match="fenced"):
        old.step()  # its cursor is still current: only the fence refuses this commit
    assert len(positions(redis_client, keys)) == 1
    assert not old_lease.renew()

    new.fence = new_lease.fence
    new.cursor = new.store.load_cursor()
    while new.step():
        pass
    assert complete(redis_client, keys, anvil.url)
    assert new_lease.token is not None
    assert new_lease.token.startswith("2:")


def test_two_networks_two_processes_spread_the_leases(
    listeners: Listeners, anvil: Anvil, nft: AccessNFT, redis_client: redis.Redis
) -> None:
    other = AccessNFT.deploy(anvil.url, ACCOUNTS[0][1])
    nets = [Keys(anvil.chain_id, c.address.lower()) for c in (nft, other)]
    args = [a for k in nets for a in ("--network", f"{k.chain_id}:{k.contract}")]
    listeners.spawn("P0", *args)
    wait_for(lambda: all(holder(redis_client, k) == "P0" for k in nets), timeout=20, what="P0")
    listeners.spawn("P1", *args)

    def spread() -> bool:
        return {holder(redis_client, k) for k in nets} == {"P0", "P1"}

    wait_for(spread, timeout=20, what="one lease each")
    for i in range(3):
        nft.mint(ACCOUNTS[1][0], f"a-{i}", KEY)
        other.mint(ACCOUNTS[2][0], f"b-{i}", KEY)
    for k in nets:
        wait_for(lambda k=k: complete(redis_client, k, anvil.url), timeout=20, what="complete")
    assert "handing this lease over" in listeners.log("P0")

    os.kill(listeners.procs["P1"].pid, signal.SIGKILL)  # the survivor takes both again
    listeners.procs["P1"].wait(timeout=10)
    wait_for(lambda: all(holder(redis_client, k) == "P0" for k in nets), timeout=20, what="P0")
    nft.mint(ACCOUNTS[1][0], "a-late", KEY)
    other.mint(ACCOUNTS[2][0], "b-late", KEY)
    for k in nets:
        wait_for(lambda k=k: complete(redis_client, k, anvil.url), timeout=20, what="complete")
        got = positions(redis_client, k)
        assert len(got) == len(set(got)) == 4
