"""The loop's short path (consumers/agent/loop.py ``advance``) and the follower's own reply
reading, against a real Redis: a spoke whose peers a batch does not touch only moves its
applied position; anything that does touch them still goes the whole way."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from factories import network_keys

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.follow import Follower
from consumers.agent.keys import generate_private_key_file
from consumers.agent.wg import MemoryWireGuard
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import PeerUpsert, to_fields
from shared.keys import Keys
from shared.logs import log

pytestmark = pytest.mark.integration

POOL = "10.88.0.0/16"
HUBS = ("hub-1", "hub-2")


def upsert(node: str, key: str, ip: str, block: int, expires: int | None = None) -> PeerUpsert:
    return PeerUpsert(node, key, ip, "0-1", "0-1", block, expires=expires)


class Spoke:
    """A running spoke agent ("a") of a two-hub network, counting its whole-path applies."""

    def __init__(self, client: redis.Redis, tmp_path: Path) -> None:
        self.client = client
        self.keys = network_keys()
        self.tmp = tmp_path
        self.block = 0
        own = generate_private_key_file(tmp_path / "a.key")
        self.append(upsert("a", own, "10.88.0.1", 1))
        self.append(upsert("hub-1", self.key("hub-1"), "10.88.0.2", 1))
        self.append(upsert("hub-2", self.key("hub-2"), "10.88.0.3", 1))
        cfg = AgentConfig(
            node_id="a",
            interface="wgadv0",
            private_key_file=tmp_path / "a.key",
            keys=self.keys,
            policy=Policy(pool=POOL, topology="hub", hubs=HUBS, expiry_grace=0.5),
            config_dir=tmp_path / "conf",
            reconcile_interval=3600.0,
        )
        self.wg = MemoryWireGuard()
        self.agent = Agent(cfg, client, self.wg)
        self.whole: list[bool] = []  # one per apply_changes call (its ``full``)
        real: Callable[..., bool] = self.agent.apply_changes

        def counted(*, full: bool, fill: bool = False) -> bool:
            self.whole.append(full)
            return real(full=full, fill=fill)

        self.agent.apply_changes = counted  # type: ignore[method-assign]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,), daemon=True)

    def key(self, name: str) -> str:
        return generate_private_key_file(self.tmp / f"{name}-{time.monotonic_ns()}.key")

    def append(self, *entries: PeerUpsert) -> str:
        pipe = self.client.pipeline(transaction=False)  # one batch for the agent
        for entry in entries:
            self.block += 1
            pipe.xadd(self.keys.peers, to_fields(entry))  # type: ignore[arg-type]
        return str(pipe.execute()[-1].decode())

    def applied(self, entry_id: str) -> None:
        wait_for(lambda: self.agent.applied_position == entry_id, timeout=30, what=entry_id)

    def status_position(self) -> bytes | None:
        return self.client.hget(self.keys.host_status("a"), "applied_position")  # type: ignore[return-value]


@pytest.fixture
def spoke(redis_client: redis.Redis, tmp_path: Path) -> Iterator[Spoke]:
    world = Spoke(redis_client, tmp_path)
    world.thread.start()
    try:
        wait_for(lambda: len(world.wg.peers) == 2, timeout=30, what="bootstrap")
        yield world
    finally:
        world.stop.set()
        world.thread.join(timeout=30)
    assert not world.thread.is_alive()


def test_a_batch_about_other_spokes_only_moves_the_applied_position(spoke: Spoke) -> None:
    peers = dict(spoke.wg.peers)
    calls, whole = len(spoke.wg.calls), len(spoke.whole)
    last = spoke.append(upsert("b", spoke.key("b"), "10.88.0.4", 2))
    spoke.applied(last)
    last = spoke.append(upsert("c", spoke.key("c"), "10.88.0.5", 3))
    spoke.applied(last)
    assert spoke.whole[whole:] == []  # neither went through the model update and apply
    assert spoke.wg.calls[calls:] == []
    assert spoke.wg.peers == peers
    assert spoke.agent.applied_block == spoke.agent.follower.block == 3
    # the status still says where the host is (written on the next read)
    wait_for(lambda: spoke.status_position() == last.encode(), timeout=30, what="status")


def test_a_batch_that_touches_a_hub_is_applied_whole(spoke: Spoke) -> None:
    """A hub's new key, even in one batch with other spokes' entries, reaches the interface."""
    whole = len(spoke.whole)
    new = spoke.key("hub-1")
    last = spoke.append(
        upsert("b", spoke.key("b"), "10.88.0.4", 2),
        upsert("hub-1", new, "10.88.0.2", 3),
        upsert("c", spoke.key("c"), "10.88.0.5", 4),
    )
    spoke.applied(last)
    assert new in spoke.wg.peers
    assert len(spoke.wg.peers) == 2
    assert len(spoke.whole) > whole
    # then the short path again, from the new state
    whole = len(spoke.whole)
    last = spoke.append(upsert("d", spoke.key("d"), "10.88.0.6", 5))
    spoke.applied(last)
    assert spoke.whole[whole:] == []
    assert new in spoke.wg.peers


def test_a_pass_that_expired_is_removed_even_when_the_batch_is_about_others(
    spoke: Spoke,
) -> None:
    """A hub whose pass has expired goes at the next wake whatever that wake brought: the
    short path gives way to the whole one when a deadline has come."""
    soon = int(time.time()) + 2
    key = spoke.key("hub-2")
    last = spoke.append(upsert("hub-2", key, "10.88.0.3", 2, expires=soon))
    spoke.applied(last)
    assert key in spoke.wg.peers
    wait_for(lambda: key not in spoke.wg.peers, timeout=30, what="expiry")
    last = spoke.append(upsert("b", spoke.key("b"), "10.88.0.4", 3))
    spoke.applied(last)
    assert key not in spoke.wg.peers
    assert len(spoke.wg.peers) == 1


@pytest.mark.parametrize("protocol", [2, 3])
def test_the_follower_reads_its_replies_itself_on_either_protocol(
    redis_server: RedisServer, protocol: int
) -> None:
    """Entries, the continuity check and an error reply, read from hiredis directly."""
    client = redis.Redis.from_url(redis_server.url, protocol=protocol)
    keys: Keys = network_keys()
    follower = Follower(client, keys, None, log)
    try:
        first = client.xadd(keys.peers, to_fields(upsert("b", "k" * 43 + "=", "10.88.0.4", 1)))  # type: ignore[arg-type]
        entries, _ = follower.read(100)
        assert [e for e, _ in entries] == [first.decode()]  # type: ignore[union-attr]
        follower.fold(entries)
        second = client.xadd(keys.peers, to_fields(upsert("c", "j" * 43 + "=", "10.88.0.5", 2)))  # type: ignore[arg-type]
        entries, _ = follower.read(100, status=("st", {"node": "a"}))
        assert [e for e, _ in entries] == [second.decode()]  # type: ignore[union-attr]
        assert client.hget("st", "node") == b"a"
        client.set("wrongtype", "x")
        with pytest.raises(redis.ResponseError):  # the status write failed: said, not lost
            follower.read(100, status=("wrongtype", {"node": "a"}))
        # the connection is still in step: the next read gets the next entry
        follower.fold(entries)
        third = client.xadd(keys.peers, to_fields(upsert("d", "i" * 43 + "=", "10.88.0.6", 3)))  # type: ignore[arg-type]
        entries, _ = follower.read(100)
        assert [e for e, _ in entries] == [third.decode()]  # type: ignore[union-attr]
    finally:
        follower.close()
        client.close()
