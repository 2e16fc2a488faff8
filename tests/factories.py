"""Small builders shared by the tests: keys, settings and environments of a test network,
the pipeline in a thread, a listener stepped by hand, and the ``wgchain`` command.

Only what a test would otherwise spell out by hand lives here; fixtures that start
services (Redis, anvil, wireguard-go) stay in ``tests/conftest.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
import requests

from producers.listener.listener import Listener, ListenerConfig
from producers.listener.store import ListenerStore
from shared.chain.rpc import RpcClient
from shared.contract.client import AccessNFT
from shared.devnet.anvil import Anvil
from shared.devnet.redis_server import RedisServer
from shared.events import LogEntry, from_fields
from shared.keys import Keys
from shared.runner import run_stages
from shared.settings import Settings, load

__all__ = [
    "CHAIN_ID",
    "KEY_A",
    "KEY_B",
    "KEY_C",
    "KEY_D",
    "WGCHAIN",
    "Pipeline",
    "catch_up",
    "clean_env",
    "decoded",
    "devnet_env",
    "devnet_settings",
    "log_entries",
    "make_listener",
    "network_keys",
    "rpc",
    "running_pipeline",
    "wg_key",
    "wgchain",
]

CHAIN_ID = 31337
#: The ``wgchain`` command of this environment.
WGCHAIN = str(Path(sys.executable).parent / "wgchain")
#: Valid WireGuard public keys the integration tests mint (``wg_key`` gives more).
KEY_A = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
KEY_D = "mE/bTz+EyX3K7Pyd0jIxyaG8kzpH4mW1cvGYnzqpbG0="
KEY_B = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
KEY_C = "UqU1QmDsBJtH6tNRZF4EKDx+9sQKPGKnhuS4EhHaL3M="


def wg_key(seed: int | str) -> str:
    """A valid WireGuard public key (base64 of 32 bytes), distinct per ``seed``.

    Small integers (0..255) give the easy-to-read key of 32 equal bytes; anything else
    (larger numbers, node names) is hashed, so every seed has its own key.
    """
    if isinstance(seed, int) and 0 <= seed < 256:
        raw = bytes([seed]) * 32
    else:
        raw = hashlib.sha256(repr(seed).encode()).digest()
    return base64.b64encode(raw).decode()


def network_keys(chain_id: int = CHAIN_ID) -> Keys:
    """The Redis keys of a fresh network (a random contract address): tests never collide."""
    return Keys(chain_id, "0x" + secrets.token_hex(20))


# --- a test network: settings, environment, the command ------------------------------------


def devnet_settings(
    anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, **more: Any
) -> Settings:
    """The settings of the test's network (its anvil, contract and Redis; confirmations 0
    unless ``more`` says otherwise), read from nothing else (no environment)."""
    given = {
        "redis_url": redis_server.url,
        "rpc_url": anvil.url,
        "contract": nft.address,
        "chain_id": anvil.chain_id,
        "confirmations": 0,
        **more,
    }
    return load(given, environ={})


def clean_env(**more: str) -> dict[str, str]:
    """This process's environment without any ``WGCHAIN_*`` variable, plus ``more``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    env.update(more)
    return env


def devnet_env(
    anvil: Anvil, nft: AccessNFT, redis_server: RedisServer, **more: str
) -> dict[str, str]:
    """:func:`clean_env` that names the test's network (Redis, RPC, contract, chain id)."""
    return clean_env(
        WGCHAIN_REDIS_URL=redis_server.url,
        WGCHAIN_RPC_URL=anvil.url,
        WGCHAIN_CONTRACT=nft.address,
        WGCHAIN_CHAIN_ID=str(anvil.chain_id),
        **more,
    )


def wgchain(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``wgchain ARGS`` run to its end, its output captured as text (any exit code)."""
    return subprocess.run(
        [WGCHAIN, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


# --- the pipeline in a thread ---------------------------------------------------------------


@dataclass
class Pipeline:
    """The listener and the stages running in a thread (``shared.runner.run_stages``)."""

    cfg: Settings
    keys: Keys
    client: redis.Redis
    stop: threading.Event
    thread: threading.Thread

    def halt(self) -> None:
        """Stop the thread and check it stopped."""
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


@contextlib.contextmanager
def running_pipeline(cfg: Settings) -> Iterator[Pipeline]:
    """The pipeline of ``cfg`` running until the block ends (then halted, its client closed)."""
    stop = threading.Event()
    thread = threading.Thread(target=run_stages, args=(cfg, stop), daemon=True)
    thread.start()
    client = redis.Redis.from_url(cfg.redis_url)
    pipeline = Pipeline(cfg, cfg.keys(), client, stop, thread)
    try:
        yield pipeline
    finally:
        stop.set()
        thread.join(timeout=30)
        client.close()
    assert not thread.is_alive()


class _Runs(Protocol):
    def run(self, stop: threading.Event) -> None: ...


@contextlib.contextmanager
def running_agent(agent: _Runs) -> Iterator[threading.Thread]:
    """``agent.run`` on a thread for the block (yielded); stopped and joined after it."""
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=30)


def counting_renders(monkeypatch: Any) -> list[str]:
    """The node ids of the config files' ``[Peer]`` blocks rendered from now on (in any
    thread; ``monkeypatch`` undoes it)."""
    from consumers.agent import render

    rendered: list[str] = []
    real = render._peer_block

    def counted(peer: Any) -> str | None:
        rendered.append(peer.node_id)
        return real(peer)

    monkeypatch.setattr(render, "_peer_block", counted)
    return rendered


# --- a listener stepped by hand, and what it appended --------------------------------------


def rpc(url: str, method: str, params: list[Any]) -> Any:
    """One raw JSON-RPC call, asserted to succeed: its result."""
    reply = requests.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=30
    ).json()
    assert "error" not in reply, reply
    return reply["result"]


def make_listener(
    client: redis.Redis,
    url: str,
    contract: str,
    *,
    confirmations: int = 0,
    max_block_range: int = 3,
) -> Listener:
    """A listener of ``contract`` on the node at ``url`` (chain id asked from it), stepped by hand."""
    chain_id = int(rpc(url, "eth_chainId", []), 16)
    keys = Keys(chain_id, contract.lower())
    cfg = ListenerConfig(
        chain_id=chain_id,
        contract=contract,
        confirmations=confirmations,
        max_block_range=max_block_range,
        poll_interval=0.05,
    )
    return Listener(RpcClient([url], retry_seconds=10), ListenerStore(client, keys), cfg)


class _Steps(Protocol):
    def step(self) -> int: ...


def catch_up(worker: _Steps) -> None:
    """Step ``worker`` (a listener) until a step has nothing to do."""
    while worker.step():
        pass


def decoded(client: redis.Redis, stream: str) -> list[tuple[str, object]]:
    """Every entry of ``stream``, decoded, with its id."""
    raw: Any = client.xrange(stream)
    return [(i.decode(), from_fields(f)) for i, f in raw]


def log_entries(client: redis.Redis, keys: Keys) -> list[LogEntry]:
    """The ``events`` stream's entries, each asserted to be a :class:`LogEntry`."""
    entries = []
    for _, entry in decoded(client, keys.events):
        assert isinstance(entry, LogEntry)
        entries.append(entry)
    return entries
