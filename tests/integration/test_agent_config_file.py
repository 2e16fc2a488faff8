"""The agent's config file against a real Redis, with the in-memory WireGuard twin, in a
process of several agents: after each change it is written again from the blocks it already
has (only the changed peers' ``[Peer]`` blocks are rendered), and it equals render_config of
the applied state through rotations, joins, leaves, a move and a fail closed
(docs/design.md §11.4)."""

from __future__ import annotations

import random
import stat
import threading
from pathlib import Path

import pytest
import redis
from factories import network_keys
from factories import running_agent as running
from factories import wg_key as key

from consumers.agent import render
from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Desired, DesiredPeer
from consumers.agent.keys import generate_private_key_file, read_private_key
from consumers.agent.wg import MemoryWireGuard
from shared.devnet.proc import wait_for
from shared.events import PeerRemove, PeerUpsert, to_fields
from shared.keys import Keys

pytestmark = pytest.mark.integration


def test_the_config_file_renders_only_changed_peers_and_equals_the_applied_state(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render, "_keep_blocks", True)  # a process of several agents
    rendered: list[str] = []  # by the agent (this test's own render_config is not counted)
    real, test_thread = render._peer_block, threading.current_thread()

    def counted(p: DesiredPeer) -> str | None:
        if threading.current_thread() is not test_thread:
            rendered.append(p.node_id)
        return real(p)

    monkeypatch.setattr(render, "_peer_block", counted)
    keys: Keys = network_keys()
    key_file = tmp_path / "a.key"
    public = generate_private_key_file(key_file)
    rng = random.Random(4)

    def append(entry: PeerUpsert | PeerRemove) -> str:
        return redis_client.xadd(keys.peers, to_fields(entry)).decode()  # type: ignore[arg-type,union-attr]

    def upsert(node: str, public_key: str, n: int) -> str:
        return append(
            PeerUpsert(node, public_key, f"10.88.{n // 250}.{n % 250 + 1}", "0-1", "0-1", 1)
        )

    upsert("a", public, 0)
    for n in range(1, 201):
        upsert(f"m{n:03}", key(f"config-file-{n}"), n)
    cfg = AgentConfig(node_id="a", interface="wgtest0", private_key_file=key_file, keys=keys,
                      config_dir=tmp_path / "conf", reconcile_interval=3600)  # fmt: skip
    agent = Agent(cfg, redis_client, MemoryWireGuard())
    conf = cfg.config_path

    def expected() -> str:
        state = agent.snapshot()
        peers = tuple(state.peers.values())
        return render.render_config(
            Desired("a", state.addresses, peers, state.fail_closed),
            listen_port=cfg.listen_port,
            private_key_file=str(key_file.absolute()),
        )

    def settled(position: str) -> None:
        """The agent applied ``position`` and its file says what it applied."""
        wait_for(lambda: agent.applied_position == position, timeout=30, what=position)
        wait_for(lambda: conf.exists() and conf.read_text() == expected(), timeout=30,
                 what=f"the config file at {position}")  # fmt: skip

    with running(agent) as thread:
        settled(redis_client.xrevrange(keys.peers, count=1)[0][0].decode())  # type: ignore[index]
        assert conf.read_text().count("[Peer]") == 200
        rendered.clear()
        settled(upsert("m017", key("config-file-rotated"), 17))
        assert rendered == ["m017"]  # not the 200 peers of the file, nor twice
        nodes, joined = list(range(1, 201)), 300
        for step in range(15):
            what = rng.choice(["rotate", "rotate", "join", "leave", "move"])
            n = rng.choice(nodes)
            if what == "rotate":
                position = upsert(f"m{n:03}", key(f"config-file-r{step}"), n)
            elif what == "join":
                joined += 1
                nodes.append(joined)
                position = upsert(f"m{joined:03}", key(f"config-file-j{joined}"), joined)
            elif what == "leave":
                nodes.remove(n)
                position = append(PeerRemove(f"m{n:03}", "0-1", "0-1", 1))
            else:  # a new address, same key
                current = agent.snapshot().peers[f"m{n:03}"].public_key
                position = upsert(f"m{n:03}", current, 600 + step)
            settled(position)
        settled(append(PeerRemove("a", "0-1", "0-1", 1)))  # not a member: fail closed
        assert agent.snapshot().fail_closed
        assert "[Peer]" not in conf.read_text()
        settled(upsert("a", public, 0))
        assert conf.read_text().count("[Peer]") == len(nodes)
    assert not thread.is_alive()
    assert conf.read_text() == expected()  # (written at stop too)
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert read_private_key(key_file) not in conf.read_text()


def test_a_second_agent_in_the_process_keeps_the_blocks(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One agent renders its file whole (its blocks would cost it memory); from the second
    agent of a process on, the files keep their blocks (docs/design.md §11.4)."""
    monkeypatch.setattr(Agent, "created", 0)
    monkeypatch.setattr(render, "_keep_blocks", False)
    keys = network_keys()

    def agent(node: str) -> Agent:
        key_file = tmp_path / f"{node}.key"
        generate_private_key_file(key_file)
        cfg = AgentConfig(node_id=node, interface=f"wg{node}", private_key_file=key_file,
                          keys=keys, config_dir=tmp_path / node)  # fmt: skip
        return Agent(cfg, redis_client, MemoryWireGuard())

    agent("a")
    assert not render.blocks_kept()
    agent("b")
    assert render.blocks_kept()
