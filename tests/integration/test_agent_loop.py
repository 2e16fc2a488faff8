"""The agent loop against a real Redis, with the in-memory WireGuard twin or file-only mode."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
import redis
from factories import network_keys

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.keys import generate_private_key_file, read_private_key
from consumers.agent.render import PeerSpec
from consumers.agent.wg import MemoryWireGuard
from shared import cli
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.events import PeerRemove, PeerUpsert, to_fields
from shared.keys import Keys

pytestmark = pytest.mark.integration


@pytest.fixture
def keys() -> Keys:
    return network_keys()


@pytest.fixture
def own(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "a.key"
    return path, generate_private_key_file(path)


def other_key(tmp_path: Path, name: str) -> str:
    return generate_private_key_file(tmp_path / f"{name}.key")


def append(client: redis.Redis, keys: Keys, entry: PeerUpsert | PeerRemove) -> str:
    return client.xadd(keys.peers, to_fields(entry)).decode()  # type: ignore[arg-type,union-attr]


def upsert(node: str, key: str, ip: str) -> PeerUpsert:
    return PeerUpsert(node, key, ip, "0-1", "0-1", 1)


def config(tmp_path: Path, keys: Keys, key_file: Path, **kw: object) -> AgentConfig:
    return AgentConfig(
        node_id="a",
        interface="wgtest0",
        private_key_file=key_file,
        keys=keys,
        config_dir=tmp_path / "conf",
        reconcile_interval=0.2,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


def test_failed_apply_rolls_back_to_the_previous_peers(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path
) -> None:
    key_file, public = own
    kb, kc, ks = (other_key(tmp_path, n) for n in "bcs")
    for entry in (upsert("a", public, "10.88.0.1"), upsert("b", kb, "10.88.0.2"),
                  upsert("c", kc, "10.88.0.3")):  # fmt: skip
        append(client, keys, entry)
    before = {
        kb: PeerSpec(kb, ("10.99.0.0/16",), None, 0),  # wrong allowed-ips
        ks: PeerSpec(ks, ("10.88.0.9/32",), "192.0.2.1:1", 0),  # a stray peer
    }
    wg = MemoryWireGuard(peers=dict(before), fail_keys={kc})
    agent = Agent(config(tmp_path, keys, key_file), client, wg)
    agent.start()

    assert wg.peers == before  # rolled back: the stray is back, b's old allowed-ips too
    assert "injected failure" in agent.last_error
    status = client.hgetall(keys.host_status("a"))
    assert b"injected failure" in status[b"last_error"]  # type: ignore[index]
    assert status[b"applied_position"] == b"0-0"  # type: ignore[index]
    assert not (tmp_path / "conf" / "wgtest0.conf").exists()

    wg.fail_keys.clear()
    assert agent.reconcile("retry")
    assert set(wg.peers) == {kb, kc}
    assert wg.peers[kb].allowed_ips == ("10.88.0.2/32",)
    assert agent.last_error == ""
    assert wg.public_key == public
    assert wg.addresses == {"10.88.0.1/16"}


def test_unchanged_peers_are_not_touched(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path
) -> None:
    key_file, public = own
    kb = other_key(tmp_path, "b")
    append(client, keys, upsert("a", public, "10.88.0.1"))
    append(client, keys, upsert("b", kb, "10.88.0.2"))
    wg = MemoryWireGuard()
    agent = Agent(config(tmp_path, keys, key_file), client, wg)
    agent.start()
    calls = len(wg.calls)
    assert agent.reconcile("timer")
    assert agent.reconcile("timer")
    assert wg.calls[calls:] == []


def test_file_only_loop_follows_the_stream(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path
) -> None:
    key_file, public = own
    kb = other_key(tmp_path, "b")
    append(client, keys, upsert("a", public, "10.88.0.1"))
    cfg = config(tmp_path, keys, key_file, file_only=True, endpoint="192.0.2.1:51820")
    agent = Agent(cfg, client, None)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        conf = cfg.config_path
        wait_for(conf.exists, timeout=10, what="first config file")
        assert "[Peer]" not in conf.read_text()
        append(client, keys, upsert("b", kb, "10.88.0.2"))
        wait_for(lambda: kb in conf.read_text(), timeout=10, what="b in the config file")
        last = append(client, keys, PeerRemove("b", "0-2", "0-2", 2))
        wait_for(lambda: kb not in conf.read_text(), timeout=10, what="b gone from the file")
        wait_for(
            lambda: client.hget(keys.host_status("a"), "applied_position") == last.encode(),
            timeout=10,
            what="status caught up",
        )
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert read_private_key(key_file) not in conf.read_text()
    backups = sorted(p.name for p in conf.parent.glob("wgtest0.conf.*"))
    assert backups == ["wgtest0.conf.1", "wgtest0.conf.2"]
    assert kb in (conf.parent / "wgtest0.conf.1").read_text()
    status = client.hgetall(keys.host_status("a"))
    assert status[b"mode"] == b"file-only"  # type: ignore[index]
    assert status[b"lag_entries"] == b"0"  # type: ignore[index]
    assert client.get(keys.host_announce("a")) is not None


def test_cli_rejects_a_bad_node_id(tmp_path: Path, redis_server: RedisServer) -> None:
    argv = ["agent", "--node", "../etc", "--interface", "wg0", "--private-key-file",
            str(tmp_path / "k"), "--redis-url", redis_server.url, "--chain-id", "1",
            "--contract", "0x" + "11" * 20]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2


def test_cli_init_creates_a_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "new.key"
    cli.main(["agent", "init", "--private-key-file", str(path)])
    public = capsys.readouterr().out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_private_key(path) not in public
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["agent", "init", "--private-key-file", str(path)])
    assert exit_info.value.code == 1
