"""The agent loop against a real Redis, with the in-memory WireGuard twin or file-only mode."""

from __future__ import annotations

import base64
import gc
import json
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from factories import network_keys
from factories import running_agent as running

from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.bootstrap import FIRST_FILL_SIZE
from consumers.agent.follow import CATCH_UP_SIZE
from consumers.agent.keys import generate_private_key_file, read_private_key
from consumers.agent.render import InterfaceState, PeerSpec
from consumers.agent.wg import MemoryWireGuard
from shared import cli, health, metrics
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import WireGuardError
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


def test_healthz_tells_when_the_agent_cannot_apply(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path
) -> None:
    """/healthz of the agent's process: 503 with the reason while the interface refuses
    what was decided, 200 once it takes it; the agent's loop leaves /healthz at stop."""
    key_file, public = own
    kb = other_key(tmp_path, "b")
    append(client, keys, upsert("a", public, "10.88.0.1"))
    append(client, keys, upsert("b", kb, "10.88.0.2"))
    wg = MemoryWireGuard(fail_keys={kb})
    agent = Agent(config(tmp_path, keys, key_file), client, wg)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)

    def reason() -> str:
        body, code = metrics.healthz()
        return str(json.loads(body).get("reason", "")) if code.startswith("503") else ""

    thread.start()
    try:
        wait_for(lambda: "agent a: cannot apply to wgtest0" in reason(), timeout=30, what="503")
        assert "injected failure" in reason()
        wg.fail_keys.clear()  # the next reconcile (every 0.2 s here) applies it
        wait_for(lambda: "agent a" not in reason(), timeout=30, what="healthy again")
        assert kb in wg.peers
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not any(w.name == "agent a" for w in health._works)  # retired at stop


@dataclass
class PipelinedTwin(MemoryWireGuard):
    """The twin with wireguard-go's sent-now, answered-later requests (``start_apply``);
    request number ``refuse`` is applied in part (its first peer), then refused."""

    refuse: int = 0
    requests: int = 0
    sizes: list[int] = field(default_factory=list)  # peers per request
    addresses_at: int = -1  # how many requests had been sent when the link got its address
    answers: int = 0  # answers read (``wait``)
    answers_at: int = -1  # how many answers had been read when the link got its address
    up_at: int = -1  # how many answers had been read when the link went up
    sent_while_up: int = 0  # peers sent while the link was up

    def start_apply(
        self, ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]
    ) -> SimpleNamespace:
        self.requests += 1
        self.sizes.append(len(peers))
        self.sent_while_up += len(peers) if self.up else 0
        if self.requests == self.refuse:
            self.apply(ifname, removals, list(peers)[:1])

            def refused() -> None:
                raise WireGuardError("wireguard-go refused the change (errno -22)")

            return SimpleNamespace(wait=refused)
        self.apply(ifname, removals, peers)

        def answered() -> None:
            self.answers += 1

        return SimpleNamespace(wait=answered)

    def set_addresses(
        self, ifname: str, cidrs: Sequence[str], pools: Sequence[str], *, up: bool = True
    ) -> bool:
        if self.addresses_at < 0:
            self.addresses_at, self.answers_at = self.requests, self.answers
        if up and self.up_at < 0:
            self.up_at = self.answers
        return super().set_addresses(ifname, cidrs, pools, up=up)


@pytest.mark.parametrize("refuse", [0, 2])
def test_bootstrap_fills_a_fresh_interface_batch_by_batch(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path, refuse: int
) -> None:
    """A first start on an interface without peers sends each catch-up batch's peers
    while reading the next; the link gets its address once caught up, while the last
    batch is still being applied (before its answer is read), and goes up only once
    every answer is read (wireguard-go starts every peer added while it is up). A
    refused batch is rolled back, and the reconcile after the bootstrap puts the
    interface right."""
    key_file, public = own
    members = 2 * CATCH_UP_SIZE + 100
    pipe = client.pipeline(transaction=False)
    pipe.xadd(keys.peers, to_fields(upsert("a", public, "10.88.0.1")))  # type: ignore[arg-type]
    wanted = {}
    for i in range(members):
        key = base64.b64encode((i + 1).to_bytes(32, "big")).decode()
        ip = f"10.88.{(i + 2) >> 8}.{(i + 2) & 0xFF}"
        wanted[key] = (f"{ip}/32",)
        pipe.xadd(keys.peers, to_fields(upsert(f"n{i:05d}", key, ip)))  # type: ignore[arg-type]
    last = pipe.execute()[-1].decode()
    wg = PipelinedTwin(refuse=refuse)
    agent = Agent(config(tmp_path, keys, key_file), client, wg)
    with running(agent):
        wait_for(lambda: agent.applied_position == last, timeout=60, what="bootstrap")
    assert {k: p.allowed_ips for k, p in wg.peers.items()} == wanted
    assert wg.requests >= (refuse or 3)  # one per catch-up batch (until the refused one)
    if not refuse:
        assert wg.addresses_at == wg.requests  # after the last batch: filled while down
        # ... but before its answer is read (wireguard-go still applies it meanwhile)
        assert wg.answers_at == wg.requests - 1
        assert wg.answers == wg.requests  # and that answer is read before the position
        assert wg.up_at == wg.requests  # the link up only once every request is answered
        assert wg.sent_while_up == 0
        assert wg.up
        # a small first batch (wireguard-go starts at once), then larger ones
        assert wg.sizes[0] <= FIRST_FILL_SIZE < max(wg.sizes)
        assert agent.iface.synced
        assert not agent.last_error
    conf = (tmp_path / "conf" / "wgtest0.conf").read_text()
    assert conf.count("[Peer]") == members


@dataclass
class LinkTwin(PipelinedTwin):
    """:class:`PipelinedTwin` that, as the real interface, can bring the link up alone
    (``link_up``: the addresses as they are)."""

    address_calls: list[bool] = field(default_factory=list)  # ``up`` of each set_addresses
    link_ups_at: list[int] = field(default_factory=list)  # answers read at each link_up

    def set_addresses(
        self, ifname: str, cidrs: Sequence[str], pools: Sequence[str], *, up: bool = True
    ) -> bool:
        self.address_calls.append(up)
        return super().set_addresses(ifname, cidrs, pools, up=up)

    def link_up(self, ifname: str) -> None:
        self.link_ups_at.append(self.answers)
        self.up = True


def test_after_a_fill_the_link_goes_up_without_reading_the_addresses_again(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path
) -> None:
    """The addresses a fill gave the interface during its last batch are not read again
    after the last answer (an ``ip`` process on the real interface): only the link goes
    up, then the position is declared applied (docs/design.md §11.2)."""
    key_file, public = own
    members = CATCH_UP_SIZE + 100
    pipe = client.pipeline(transaction=False)
    pipe.xadd(keys.peers, to_fields(upsert("a", public, "10.88.0.1")))  # type: ignore[arg-type]
    for i in range(members):
        key = base64.b64encode((i + 1).to_bytes(32, "big")).decode()
        ip = f"10.88.{(i + 2) >> 8}.{(i + 2) & 0xFF}"
        pipe.xadd(keys.peers, to_fields(upsert(f"n{i:05d}", key, ip)))  # type: ignore[arg-type]
    last = pipe.execute()[-1].decode()
    wg = LinkTwin()
    agent = Agent(config(tmp_path, keys, key_file), client, wg)
    with running(agent):
        wait_for(lambda: agent.applied_position == last, timeout=60, what="bootstrap")
        assert wg.address_calls == [False]  # given once, the link left down
        assert wg.link_ups_at == [wg.requests]  # up once, after every answer
        assert wg.up
        assert wg.addresses == {"10.88.0.1/16"}
        assert len(wg.peers) == members


@dataclass
class SlowCheckTwin(PipelinedTwin):
    """:class:`PipelinedTwin` whose first look at the interface (the fill's empty check,
    in a thread of its own) lasts until ``ready`` says so (or 5 s), as a ``wg show``
    process on a loaded host; what ``ready`` said is kept."""

    ready: Callable[[], bool] = lambda: True
    ready_at_show: list[bool] = field(default_factory=list)

    def show(self, ifname: str) -> InterfaceState:
        if not self.ready_at_show:
            self.ready_at_show.append(wait_until(self.ready, 5.0))
        return super().show(ifname)


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition`` became true within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_first_batch_is_folded_while_the_interface_is_checked(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path
) -> None:
    """A fill's first request waits for the look at the interface (is it empty?); the
    first batch is folded and its announcements read meanwhile, not after it
    (docs/design.md §11.2), so the request goes out as soon as the look is done."""
    key_file, public = own
    pipe = client.pipeline(transaction=False)
    pipe.xadd(keys.peers, to_fields(upsert("a", public, "10.88.0.1")))  # type: ignore[arg-type]
    for i in range(50):
        key = base64.b64encode((i + 1).to_bytes(32, "big")).decode()
        pipe.xadd(keys.peers, to_fields(upsert(f"n{i:05d}", key, f"10.88.1.{i + 2}")))  # type: ignore[arg-type]
    last = pipe.execute()[-1].decode()
    announced = set()
    wg = SlowCheckTwin()
    agent = Agent(config(tmp_path, keys, key_file), client, wg)
    read = agent.announcements.read

    def reading(nodes: Iterable[str]) -> dict[str, str | None]:
        wanted = list(nodes)
        announced.update(wanted)
        return read(wanted)

    agent.announcements.read = reading  # type: ignore[method-assign]
    wg.ready = lambda: len(agent.follower.table.records) == 51 and len(announced) == 51
    with running(agent):
        wait_for(lambda: agent.applied_position == last, timeout=60, what="bootstrap")
    assert wg.ready_at_show == [True]  # folded and announcements read during the check
    assert wg.requests == 1  # and still a fill
    assert len(wg.peers) == 50


@dataclass
class CollectorTwin(PipelinedTwin):
    """:class:`PipelinedTwin` noting whether Python's cyclic collector was on at each
    request."""

    collector_on: list[bool] = field(default_factory=list)

    def start_apply(
        self, ifname: str, removals: Sequence[str], peers: Sequence[PeerSpec]
    ) -> SimpleNamespace:
        self.collector_on.append(gc.isenabled())
        return super().start_apply(ifname, removals, peers)


def test_the_collector_is_paused_while_a_fill_catches_up(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path
) -> None:
    """The catch-up builds objects for every entry and no cycles: the cyclic collector is
    off while it runs (it would walk them again and again on the cores wireguard-go
    fills on), and on again once the agent has caught up."""
    key_file, public = own
    pipe = client.pipeline(transaction=False)
    pipe.xadd(keys.peers, to_fields(upsert("a", public, "10.88.0.1")))  # type: ignore[arg-type]
    for i in range(CATCH_UP_SIZE + 100):
        key = base64.b64encode((i + 1).to_bytes(32, "big")).decode()
        ip = f"10.88.{(i + 2) >> 8}.{(i + 2) & 0xFF}"
        pipe.xadd(keys.peers, to_fields(upsert(f"n{i:05d}", key, ip)))  # type: ignore[arg-type]
    last = pipe.execute()[-1].decode()
    wg = CollectorTwin()
    agent = Agent(config(tmp_path, keys, key_file), client, wg)
    assert gc.isenabled()
    with running(agent):
        wait_for(lambda: agent.applied_position == last, timeout=60, what="bootstrap")
        assert gc.isenabled()  # on again once caught up
    assert len(wg.collector_on) >= 3  # a fill, batch by batch
    assert not any(wg.collector_on), wg.collector_on


def test_the_status_write_after_a_change_rides_on_a_read_that_blocks(
    client: redis.Redis, keys: Keys, own: tuple[Path, str], tmp_path: Path
) -> None:
    """After a change, the status written in the next read's round trip does not make that
    read return at once: one read per change, not two (a fleet pays each one per agent)."""
    key_file, public = own
    append(client, keys, upsert("a", public, "10.88.0.1"))
    cfg = replace(config(tmp_path, keys, key_file), reconcile_interval=60.0)
    agent = Agent(cfg, client, MemoryWireGuard())
    reads: list[tuple[int | None, bool]] = []  # (block_ms, status written) of each read
    real_read = agent.follower.read

    def read(block_ms: int | None, *args: object) -> object:
        reads.append((block_ms, len(args) > 1 and args[1] is not None))
        return real_read(block_ms, *args)  # type: ignore[arg-type]

    agent.follower.read = read  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.applied_position != "0-0", timeout=30, what="bootstrap")
        threading.Event().wait(0.5)  # idle, blocked in a read; the status is due
        kb = other_key(tmp_path, "b")
        before = len(reads)  # (the read in progress returns the change)
        last = append(client, keys, upsert("b", kb, "10.88.0.2"))
        wait_for(lambda: agent.applied_position == last, timeout=30, what="the change")
        threading.Event().wait(0.5)
        after = reads[before:]
    finally:
        stop.set()
        thread.join(timeout=30)
    # the read after the change writes the status and blocks (it would return at once
    # and be followed by a second read before the fix)
    assert len(after) == 1, after
    block_ms, status_written = after[0]
    assert status_written
    assert block_ms is not None
    assert block_ms >= 100, after
