"""Time-limited passes end to end: anvil, ``wgchain run``, three agents on wireguard-go.

The whole path of docs/design.md §5 and §11.6 with the real parts: the contract's
``cancelSubscription`` removes a pass from every host at once; ``renewSubscription``
for 20 s brings it back on every host; Redis then stops, and every host removes it at
its expiration (plus ``WGCHAIN_EXPIRY_GRACE``) by its own clock, with nothing arriving
from anywhere; once Redis is back, ``check`` denies it ``expired``, and a renewal
restores it on every host with the address it had. No process crashes.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import require
from hostagents import start_agents

from consumers.agent.wg import parse_dump
from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.netns import Host, Lab, available, wgchain_command
from shared.devnet.proc import stop_process, wait_for
from shared.devnet.redis_server import RedisServer
from shared.errors import ServiceUnavailable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

PORT = 51820
NODES = ("node-a", "node-b", "node-c")
#: Seconds the renewal lasts (the issue's 20 s).
RENEWED_FOR = 20
#: The agents' ``WGCHAIN_EXPIRY_GRACE`` (seconds).
GRACE = 1
#: Seconds a convergence may take (slow shared machines).
SETTLE = 90.0


@dataclass
class Fleet:
    lab: Lab
    server: RedisServer
    anvil: Anvil
    nft: AccessNFT
    tmp: Path
    env: dict[str, str]
    hosts: dict[str, Host] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    run: subprocess.Popen[bytes] | None = None

    def peers(self, node: str) -> set[str]:
        host = self.hosts[node]
        return set(parse_dump(host.exec(["wg", "show", host.ifname, "dump"]).stdout).peers)

    def allowed(self, node: str) -> dict[str, tuple[str, ...]]:
        host = self.hosts[node]
        found = parse_dump(host.exec(["wg", "show", host.ifname, "dump"]).stdout).peers
        return {k: p.allowed_ips for k, p in found.items()}

    def carried(self, members: set[str]) -> bool:
        """Every node of ``members`` peers exactly with the others; the rest with nobody."""
        for node in NODES:
            want = {self.keys[m] for m in members - {node}} if node in members else set()
            if self.peers(node) != want:
                return False
        return True

    def wgchain(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*wgchain_command(), *args],
            env={**self.env, "WGCHAIN_REDIS_URL": self.server.url},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def wait(self, members: set[str], what: str, timeout: float = SETTLE) -> None:
        try:
            wait_for(lambda: self.carried(members), timeout=timeout, interval=0.05, what=what)
        except TimeoutError as exc:
            logs = "".join(
                f"\n--- {n}\n{(self.tmp / f'{n}.log').read_text(errors='replace')[-2500:]}"
                for n in ("run", *NODES)
            )
            raise AssertionError(f"{exc}{logs}") from None

    def alive(self) -> dict[str, int | None]:
        procs = {"run": self.run, **self.agents}
        return {n: p.poll() for n, p in procs.items() if p is not None}


@pytest.fixture
def fleet(tmp_path: Path, anvil: Anvil, nft: AccessNFT) -> Iterator[Fleet]:
    ok, why = available()
    require(ok, f"network-namespace lab unavailable: {why}")
    try:
        server = RedisServer(appendonly=True).start()
    except ServiceUnavailable as exc:
        require(False, str(exc))
        raise
    lab = Lab()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGCHAIN_")}
    env.update(
        WGCHAIN_RPC_URL=anvil.url,
        WGCHAIN_CONTRACT=nft.address,
        WGCHAIN_CHAIN_ID=str(anvil.chain_id),
        WGCHAIN_CONFIRMATIONS="0",
        WGCHAIN_POLL_INTERVAL="0.2",
        WGCHAIN_LEASE_TTL="3",
        WGCHAIN_RECONCILE_INTERVAL="5",
        WGCHAIN_EXPIRY_GRACE=str(GRACE),
    )
    found = Fleet(lab, server, anvil, nft, tmp_path, env)
    try:
        with open(tmp_path / "run.log", "ab") as out:
            found.run = subprocess.Popen(
                [*wgchain_command(), "run"],
                env={**env, "WGCHAIN_REDIS_URL": server.url},
                stdout=out,
                stderr=out,
            )
        agent_env = {**env, "WGCHAIN_REDIS_URL": server.unix_url}  # reachable from a netns
        found.keys, found.hosts, found.agents = start_agents(lab, NODES, tmp_path, agent_env, PORT)
        yield found
    finally:
        if found.run is not None:
            stop_process(found.run)
        lab.cleanup()
        server.cleanup()


def test_a_renewed_pass_expires_on_every_host_while_redis_is_down(fleet: Fleet) -> None:
    nft = fleet.nft
    for i, node in enumerate(NODES[:2]):
        nft.mint(ACCOUNTS[1 + i][0], node, fleet.keys[node])  # perpetual: never expires
    token = nft.mint(ACCOUNTS[3][0], "node-c", fleet.keys["node-c"], duration=3600).token_id
    everyone = set(NODES)
    fleet.wait(everyone, "the mesh of the three nodes")
    address = fleet.allowed("node-a")[fleet.keys["node-c"]]

    nft.cancel(token)  # cancelled: off every host at once, node-c fails closed
    fleet.wait({"node-a", "node-b"}, "the cancelled pass removed from every host")

    nft.renew(token, RENEWED_FOR)  # counted from now: the pass was cancelled
    expires = nft.expires_at(token)
    deadline = expires + GRACE
    fleet.wait(everyone, "the renewed pass back on every host", timeout=deadline - time.time() - 3)
    assert fleet.allowed("node-a")[fleet.keys["node-c"]] == address  # its address kept

    fleet.server.stop()  # Redis goes away: nothing reaches any host from now on
    assert time.time() < deadline - 1, "too slow to see the pass carried before it expires"
    assert fleet.carried(everyone)
    fleet.wait({"node-a", "node-b"}, "the expired pass removed by every host, Redis down")
    print(f"removed from every host {time.time() - deadline:.2f} s after its deadline")
    assert all(rc is None for rc in fleet.alive().values()), fleet.alive()

    fleet.server.start()  # Redis back (from its AOF)
    checked = fleet.wgchain("check", "--node", "node-c", "--key", fleet.keys["node-c"], "--json")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["reason"] == "expired"
    listed = fleet.wgchain("nodes", "--json")
    rows = {row["node"]: row for row in json.loads(listed.stdout)["nodes"]}
    assert (rows["node-c"]["live"], rows["node-c"]["reason"]) == (False, "expired")
    assert rows["node-c"]["expires"] == expires
    assert rows["node-c"]["ipv4"] is not None  # it keeps its address
    assert rows["node-a"]["expires"] is None
    nft.renew(token, 3600)
    fleet.wait(everyone, "the renewal restores the pass on every host")
    assert fleet.allowed("node-a")[fleet.keys["node-c"]] == address
    checked = fleet.wgchain("check", "--node", "node-c", "--key", fleet.keys["node-c"], "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    status = json.loads(fleet.wgchain("status", "--json").stdout)
    assert [e["node"] for e in status["expiring"]] == ["node-c"]  # within 24 h

    assert all(rc is None for rc in fleet.alive().values()), fleet.alive()
    for name in ("run", *NODES):
        assert "Traceback" not in (fleet.tmp / f"{name}.log").read_text(errors="replace")
