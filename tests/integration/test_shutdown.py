"""SIGTERM ends every long-running process cleanly: current batch committed, exit 0.

Each subcommand runs as a real process against a real Redis (and anvil where it
needs a chain), gets work, and is sent SIGTERM, once with Redis up and once with
Redis gone (the process is then retrying): it must exit 0 within
:data:`STOP_BOUND` seconds, a bound on a hang, not a speed measurement. With
Redis up, what a stage reports as its last position is what Redis holds: the
batch it was on was committed before it exited.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from shared import shutdown
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.proc import free_port, wait_for
from shared.devnet.redis_server import RedisServer
from shared.keys import Keys
from shared.redis_log import redis_retry

pytestmark = pytest.mark.integration

WGCHAIN = str(Path(sys.executable).parent / "wgchain")


def test_retry_policy_gives_up_when_shutdown_is_requested() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    outcome: list[BaseException] = []
    attempts: list[int] = []

    def ping() -> object:
        attempts.append(1)
        return client.ping()

    def call() -> None:
        try:
            redis_retry(ping)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(attempts) >= 2, timeout=10, what="a second attempt")
        assert thread.is_alive()  # still retrying: Redis is down
        shutdown.SHUTDOWN.set()
        thread.join(timeout=10)  # the policy alone would retry for a minute
        assert not thread.is_alive()
        assert isinstance(outcome[0], redis.ConnectionError)
    finally:
        shutdown.SHUTDOWN.clear()


# --- every long-running subcommand ---------------------------------------------------------

#: Seconds a process may take to exit after SIGTERM.
STOP_BOUND = 15
#: What a process logs once when Redis calls start failing (``shared.health.Outage``).
RETRY_LINE = r"Redis unreachable \((ConnectionError|TimeoutError)"
#: What each process logs while Redis is gone.
OUTAGE_LINE = dict.fromkeys(
    ["listen", "run", "registry", "ipam", "agent", "api", "worker"], RETRY_LINE
)
KEY = "A" * 43 + "="
#: Log lines that show a process is at work.
READY = {
    "listen": ["took the lease"],
    "registry": ["registry started at position"],
    "ipam": ["ipam started at position"],
    "run": ["took the lease", "registry started at position", "ipam started at position"],
    "worker": ["serving queue"],
}


@dataclass
class Proc:
    """One subcommand under test, logging to a file."""

    command: str
    tmp: Path
    server: RedisServer
    rpc_url: str
    keys: Keys
    proc: subprocess.Popen[bytes] | None = None
    api_url: str = ""

    @property
    def log_path(self) -> Path:
        return self.tmp / f"{self.command}.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
        env.update(
            WGCHAIN_REDIS_URL=self.server.url,
            WGCHAIN_RPC_URL=self.rpc_url,
            WGCHAIN_CONTRACT=self.keys.contract,
            WGCHAIN_CHAIN_ID=str(self.keys.chain_id),
            WGCHAIN_CONFIRMATIONS="0",
            WGCHAIN_POLL_INTERVAL="0.2",
            WGCHAIN_LEASE_TTL="3",
            WGCHAIN_RECONCILE_INTERVAL="1",
            WGCHAIN_API_LISTEN=f"127.0.0.1:{free_port()}",
        )
        self.api_url = "http://" + env["WGCHAIN_API_LISTEN"]
        args = [self.command]
        if self.command == "agent":
            args += ["--node", "node-0", "--interface", "wgsd0", "--file-only", "--generate-key"]
            args += ["--private-key-file", str(self.tmp / "agent.key")]
            args += ["--config-dir", str(self.tmp / "wg")]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([WGCHAIN, *args], env=env, stdout=out, stderr=out)

    def ready(self) -> bool:
        """True once the process does its job (it has read or written Redis)."""
        if self.command == "agent":
            return (self.tmp / "wg" / "wgsd0.conf").exists()
        if self.command == "api":
            return requests.get(self.api_url + "/healthz", timeout=5).ok
        return all(marker in self.log() for marker in READY[self.command])


def busy(nft: AccessNFT, count: int) -> None:
    """Work for the pipeline: grants, one block each."""
    for i in range(count):
        nft.mint(ACCOUNTS[1 + i % 5][0], f"node-{i}", KEY)


COMMANDS = ["listen", "registry", "ipam", "agent", "run", "api", "worker"]
#: The stages (with a committed position) each command runs.
STAGES = {
    "listen": ["listener"],
    "registry": ["registry"],
    "ipam": ["ipam"],
    "run": ["listener", "registry", "ipam"],
}


@pytest.mark.parametrize("redis_down", [False, True], ids=["redis-up", "redis-down"])
@pytest.mark.parametrize("command", COMMANDS)
def test_sigterm_ends_the_process_with_exit_0(
    command: str,
    redis_down: bool,
    tmp_path: Path,
    redis_server: RedisServer,
    anvil: Anvil,
    nft: AccessNFT,
) -> None:
    keys = Keys(anvil.chain_id, nft.address.lower())
    proc = Proc(command, tmp_path, redis_server, anvil.url, keys)
    proc.start()
    assert proc.proc is not None
    try:
        wait_for(proc.ready, timeout=60, what=f"{command} to start")
        busy(nft, 3)
        if redis_down:
            redis_server.stop()
            outage = re.compile(OUTAGE_LINE[command])
            wait_for(lambda: outage.search(proc.log()), timeout=60, what="the outage noticed")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=STOP_BOUND) == 0, proc.log()[-3000:]
        if not redis_down:
            check_committed(command, proc.log(), redis_server, keys)
    finally:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


def check_committed(command: str, log: str, server: RedisServer, keys: Keys) -> None:
    """The last position each stage (and the listener) reported is the one in Redis."""
    stopped = dict(
        re.findall(r"(registry|ipam|listener) +stopped at (?:position|block) (\S+)", log)
    )
    assert set(stopped) == set(STAGES.get(command, ()))
    client = redis.Redis.from_url(server.url)
    try:
        for stage, position in stopped.items():
            if stage == "listener":
                stored: Any = client.hget(keys.cursor, "block")
                assert int(stored or -1) == int(position)
            else:
                stored = client.get(keys.position(stage))
                assert (stored or b"0-0").decode() == position
    finally:
        client.close()
