"""Agent housekeeping on a real Redis: stale temp files, and why the stream lost entries."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from factories import network_keys

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.keys import generate_private_key_file
from shared.events import PeerUpsert, to_fields
from shared.keys import Keys
from shared.logs import log

pytestmark = pytest.mark.integration


def make_agent(client: redis.Redis, tmp_path: Path) -> tuple[Agent, Keys, str]:
    keys = network_keys()
    key_file = tmp_path / "a.key"
    public = generate_private_key_file(key_file)
    config = AgentConfig(
        node_id="a",
        interface="wghk0",
        private_key_file=key_file,
        keys=keys,
        config_dir=tmp_path / "conf",
        file_only=True,
    )
    return Agent(config, client, None), keys, public


def append(client: redis.Redis, keys: Keys, node: str, key: str, ip: str) -> str:
    entry = PeerUpsert(node, key, ip, "0-1", "0-1", 1)
    return client.xadd(keys.peers, to_fields(entry)).decode()  # type: ignore[arg-type,union-attr]


def test_start_removes_temp_files_a_kill_left(redis_client: redis.Redis, tmp_path: Path) -> None:
    agent, keys, public = make_agent(redis_client, tmp_path)
    append(redis_client, keys, "a", public, "10.88.0.1")
    conf = tmp_path / "conf"
    conf.mkdir()
    stale = conf / ".wghk0.conf.k1ll3d_x.tmp"
    stale.write_text("half a config")
    other = conf / ".other.conf.k1ll3d_x.tmp"  # another interface's: not ours to remove
    other.write_text("x")
    agent.start()
    assert not stale.exists()
    assert other.exists()
    assert (conf / "wghk0.conf").exists()


def test_a_retention_trim_is_logged_as_a_trim_not_a_reset(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    agent, keys, public = make_agent(redis_client, tmp_path)
    append(redis_client, keys, "a", public, "10.88.0.1")
    agent.bootstrap()
    others = [generate_private_key_file(tmp_path / f"{n}.key") for n in range(4)]
    ids = [append(redis_client, keys, f"n{n}", k, f"10.88.0.{n + 2}") for n, k in enumerate(others)]
    redis_client.xtrim(keys.peers, minid=ids[2], approximate=False)  # ours and 2 unread go
    lines: list[str] = []
    sink = log.add(lambda message: lines.append(str(message)), level="WARNING")
    try:
        agent.fold(agent.read_peers(None))
    finally:
        log.remove(sink)
    text = "".join(lines)
    assert "were trimmed before we read them" in text
    assert "Redis was reset" not in text
    assert set(agent.table.records) == {"n2", "n3"}  # started again from what is left


def test_a_reset_stream_is_logged_as_a_reset(redis_client: redis.Redis, tmp_path: Path) -> None:
    agent, keys, public = make_agent(redis_client, tmp_path)
    append(redis_client, keys, "a", public, "10.88.0.1")
    agent.bootstrap()
    redis_client.delete(keys.peers)  # Redis lost its data, then the pipeline refilled it
    time.sleep(0.005)  # a later millisecond: the refill's ids differ from the lost ones
    append(redis_client, keys, "a", public, "10.88.0.1")
    lines: list[str] = []
    sink = log.add(lambda message: lines.append(str(message)), level="WARNING")
    try:
        agent.fold(agent.read_peers(None))
    finally:
        log.remove(sink)
    text = "".join(lines)
    assert "Redis was reset" in text
    assert "trimmed" not in text
    assert set(agent.table.records) == {"a"}
