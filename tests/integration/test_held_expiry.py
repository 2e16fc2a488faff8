"""Expiry enforced by a restarted agent holding its state file while Redis is down.

A host rebooted during a Redis outage restores its peers from its state file and holds
them (docs/design.md §11.5); the state file keeps each peer's expiration and the host's
own, so the held configuration still loses a peer at its deadline, and the whole host
fails closed (``expired``) at its own, by its own clock (§11.6). The interface is the
in-memory twin; the same on real wireguard-go is in tests/e2e/test_expiry_hosts.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import redis
from factories import network_keys

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from consumers.agent.wg import MemoryWireGuard
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import PeerUpsert, to_fields

pytestmark = pytest.mark.integration

POOL = "10.77.0.0/24"
GRACE = 0.5


def test_a_held_configuration_drops_expired_peers_and_fails_closed_at_its_own_expiry(
    redis_client: redis.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = network_keys()
    public = {n: generate_private_key_file(tmp_path / f"{n}.key") for n in ("self", "b", "c")}
    now = int(time.time())
    expires = {"self": now + 8, "b": now + 4, "c": None}
    for i, node in enumerate(("self", "b", "c"), start=1):
        entry = PeerUpsert(node, public[node], f"10.77.0.{i}", "0-1", "0-1", i, None, expires[node])
        redis_client.xadd(keys.peers, to_fields(entry))  # type: ignore[arg-type]
    config = AgentConfig(
        node_id="self",
        interface="wgex0",
        private_key_file=tmp_path / "self.key",
        keys=keys,
        policy=Policy(pool=POOL, expiry_grace=GRACE),
        config_dir=tmp_path / "conf",
        reconcile_interval=30,
    )
    first = Agent(config, redis_client, MemoryWireGuard())
    first.start()
    assert {p.public_key for p in first.iface.applied.values()} == {public["b"], public["c"]}
    first.files.close(first.snapshot)
    redis_server.stop()

    rebooted = MemoryWireGuard()  # the interface lost its peers; Redis is down
    dead = redis.Redis.from_url(redis_server.url, socket_connect_timeout=0.2)
    agent = Agent(config, dead, rebooted)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    try:
        thread.start()
        wait_for(lambda: len(rebooted.peers) == 2, timeout=5, what="peers restored from the file")
        assert time.time() < now + 4 + GRACE, "too slow to see b before its deadline"
        wait_for(
            lambda: {p.public_key for p in rebooted.peers.values()} == {public["c"]},
            timeout=10,
            interval=0.05,
            what="b dropped from the held configuration at its deadline",
        )
        assert time.time() >= now + 4 + GRACE
        assert agent.iface.fail_closed is None
        wait_for(lambda: not rebooted.peers, timeout=10, interval=0.05, what="own pass expired")
        assert time.time() >= now + 8 + GRACE
        assert agent.iface.fail_closed == "expired"
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
