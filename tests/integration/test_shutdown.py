"""SIGTERM ends a process promptly even while Redis is unreachable and it is retrying."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import redis

from shared import shutdown
from shared.devnet.proc import free_port, wait_for
from shared.redis_log import redis_retry

WGCHAIN = str(Path(sys.executable).parent / "wgchain")


def test_retry_policy_gives_up_when_shutdown_is_requested():
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


def test_sigterm_with_redis_gone_exits_cleanly(redis_server):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")},
        "WGCHAIN_REDIS_URL": redis_server.url,
        "WGCHAIN_CONTRACT": "0x" + "ab" * 20,
        "WGCHAIN_CHAIN_ID": "31337",
    }
    proc = subprocess.Popen(
        [WGCHAIN, "registry"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        client = redis.Redis.from_url(redis_server.url)
        position = "wgchain:{31337:0x" + "ab" * 20 + "}:registry:position"
        client.xadd(position.replace("registry:position", "events"), {"v": "1", "type": "x"})
        wait_for(lambda: client.get(position), timeout=20, what="the stage to commit")
        redis_server.stop()  # the stage now retries its reads
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
