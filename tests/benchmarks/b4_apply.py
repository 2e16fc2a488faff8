"""B4 apply: one peer change on a real wireguard-go interface that already has many peers.

A network-namespace lab host runs ``wireguard-go``; a fresh ``redis-server`` holds a
``peers`` stream of 10,000 members plus the host's own node. Inside the namespace
(``child.py apply``) a real :class:`Agent` with the real :class:`Wg` bootstraps the
interface from that stream (the bootstrap time), then:

- ``wg set``: one peer's allowed IPs changed with ``consumers.agent.wg.set_peer``,
  the command the agent runs per changed peer (200 times);
- agent reconcile: a key rotation appended to ``peers``, then the agent's own
  fold + reconcile (reads the interface, diffs, removes the old key, sets the new
  one, verifies by reading back, rewrites its config file);
- baseline: ``wg syncconf`` of the full 10,000-peer configuration with one peer
  changed, and ``wg syncconf`` of all peers onto an emptied interface (bootstrap).
"""

from __future__ import annotations

import base64
import random
import re
import secrets
import time
from pathlib import Path
from typing import Any

import redis
from common import Result, Unavailable, child, mib, percentiles, proc_status, timer

from shared.devnet.netns import Lab, available
from shared.devnet.redis_server import RedisServer
from shared.events import PeerUpsert, to_fields
from shared.keys import Keys

CHAIN_ID = 31337
CONTRACT = "0x00000000000000000000000000000000000b4a99"
POOL = "10.96.0.0/16"
OWN_NODE = "bench-self"


def address(i: int) -> str:
    """IPv4 address of the i-th peer (offset 2.. in the pool; 1 is the host itself)."""
    offset = i + 2
    return f"10.96.{offset >> 8}.{offset & 0xFF}"


def random_key(rng: random.Random) -> str:
    """A random WireGuard public key (32 random bytes, base64)."""
    return base64.b64encode(rng.randbytes(32)).decode()


def run(peers: int, changes: int, agent_changes: int, syncs: int) -> list[Result]:
    """Bootstrap ``peers`` peers, time single changes and full syncs (module docstring)."""
    from consumers.agent.keys import generate_private_key_file

    ok, reason = available()
    if not ok:
        raise Unavailable(reason)
    params = {"peers": peers, "changes": changes, "agent_changes": agent_changes, "syncs": syncs}
    keys = Keys(CHAIN_ID, CONTRACT)
    rng = random.Random(4)
    with RedisServer() as server, Lab(prefix=f"wgcb4{secrets.token_hex(2)}") as lab:
        host = lab.add_host("b4")
        host.start_wireguard()
        key_file = lab.workdir / "own.key"
        own_key = generate_private_key_file(key_file)
        client = redis.Redis.from_url(server.url)
        pipe = client.pipeline(transaction=False)
        own = PeerUpsert(OWN_NODE, own_key, "10.96.0.1", "0-1", "0-1", 1)
        pipe.xadd(keys.peers, to_fields(own))  # type: ignore[arg-type]
        for i in range(peers):
            upsert = PeerUpsert(f"peer-{i:05d}", random_key(rng), address(i), "0-1", "0-1", 1)
            pipe.xadd(keys.peers, to_fields(upsert))  # type: ignore[arg-type]
        pipe.execute()
        client.close()
        out: dict[str, Any] = child(
            "apply",
            {
                **params,
                "redis_url": server.unix_url,
                "interface": host.ifname,
                "key_file": str(key_file),
                "workdir": str(lab.workdir),
            },
            netns=host.ns,
            timeout=1800,
        )
    wg_set = percentiles(out["wg_set_ms"])
    agent = percentiles(out["agent_ms"])
    sync = percentiles(out["syncconf_ms"])
    common_extra = {"syncconf_p50_ms": sync[50], "peers_on_interface": out["peers_on_interface"]}
    return [
        Result(
            name=f"B4 apply: one change, {peers:,} peers (wg set)",
            value=wg_set[50],
            unit="ms (p50)",
            baseline=f"wg syncconf of all {peers:,} peers",
            baseline_value=sync[50],
            better="lower",
            ratio_meaning="faster",
            params=params,
            extra={
                "p50_ms": wg_set[50],
                "p95_ms": wg_set[95],
                "p99_ms": wg_set[99],
                **common_extra,
            },
        ),
        Result(
            name=f"B4 apply: agent reconcile of one change, {peers:,} peers",
            value=agent[50],
            unit="ms (p50)",
            baseline=f"wg syncconf of all {peers:,} peers",
            baseline_value=sync[50],
            better="lower",
            ratio_meaning="faster",
            params=params,
            extra={"p50_ms": agent[50], "p95_ms": agent[95], "p99_ms": agent[99], **common_extra},
        ),
        Result(
            name=f"B4 bootstrap: agent start, {peers:,} peers",
            value=out["bootstrap_s"],
            unit="s",
            baseline="wg syncconf of all peers onto an empty interface",
            baseline_value=out["bulk_load_s"],
            better="lower",
            ratio_meaning="faster",
            params=params,
        ),
        Result(
            name=f"Memory: agent RSS, {peers:,} peers",
            value=mib(out["rss_loaded"]),
            unit="MiB",
            baseline="the same process before the agent started",
            baseline_value=mib(out["rss_empty"]),
            better="reference",
            ratio_meaning="the empty process",
            params=params,
            extra={"peak_rss_mib": mib(out["peak_rss"])},
        ),
    ]


def apply_child(params: dict[str, Any]) -> dict[str, Any]:
    """Inside the namespace: bootstrap an agent, then time changes and full syncs."""
    from consumers.agent.agent import Agent, AgentConfig
    from consumers.agent.desired import Policy
    from consumers.agent.wg import Wg, set_peer, show_dump
    from consumers.agent.wg import run as wg

    ifname = params["interface"]
    workdir = Path(params["workdir"])
    keys = Keys(CHAIN_ID, CONTRACT)
    client = redis.Redis.from_url(params["redis_url"])
    config = AgentConfig(
        node_id=OWN_NODE,
        interface=ifname,
        private_key_file=Path(params["key_file"]),
        keys=keys,
        policy=Policy(pool=POOL),
        config_dir=workdir / "conf",
        reconcile_interval=3600,
    )
    rss_empty = proc_status()["VmRSS"]
    agent = Agent(config, client, Wg())
    with timer() as t_boot:
        agent.start()
    rss_loaded = proc_status()["VmRSS"]
    on_interface = len(show_dump(ifname).peers)
    assert on_interface == params["peers"], (on_interface, params["peers"])
    assert agent.last_error == "", agent.last_error

    # one wg set per change (what the agent runs for one changed peer), then put back
    rng = random.Random(44)
    peers = sorted(show_dump(ifname).peers.values(), key=lambda p: p.public_key)
    picked = [rng.choice(peers) for _ in range(params["changes"])]
    wg_set_ms = []
    for n, peer in enumerate(picked):
        moved = f"10.97.{n >> 8}.{n & 0xFF}/32"
        start = time.perf_counter()
        set_peer(ifname, peer.public_key, [moved], None, peer.keepalive)
        wg_set_ms.append((time.perf_counter() - start) * 1000)
    for peer in picked:
        set_peer(ifname, peer.public_key, peer.allowed_ips, None, peer.keepalive)

    # the agent's whole path for one change: a key rotation through the peers stream
    agent_ms = []
    for n in range(params["agent_changes"]):
        i = rng.randrange(params["peers"])
        upsert = PeerUpsert(f"peer-{i:05d}", random_key(rng), address(i), "0-1", "0-1", 2 + n)
        client.xadd(keys.peers, to_fields(upsert))  # type: ignore[arg-type]
        start = time.perf_counter()
        agent.fold(agent.read_peers(None))
        ok = agent.reconcile("peers")
        agent_ms.append((time.perf_counter() - start) * 1000)
        assert ok, agent.last_error

    # baseline: the full configuration through wg syncconf (one peer changed each time)
    full = workdir / "full.conf"
    text = wg(["wg", "showconf", ifname])
    first_ips = re.search(r"^AllowedIPs = (.*)$", text, re.M)
    assert first_ips is not None
    syncconf_ms = []
    for n in range(params["syncs"]):
        changed = text.replace(first_ips.group(0), f"AllowedIPs = 10.98.0.{n + 1}/32", 1)
        _write_private(full, changed)
        start = time.perf_counter()
        wg(["wg", "syncconf", ifname, str(full)], timeout=300)
        syncconf_ms.append((time.perf_counter() - start) * 1000)
    # bulk load: every peer onto an emptied interface
    interface_only = text.split("\n[Peer]", 1)[0] + "\n"
    empty = workdir / "empty.conf"
    _write_private(empty, interface_only)
    wg(["wg", "syncconf", ifname, str(empty)], timeout=300)
    assert not show_dump(ifname).peers
    _write_private(full, text)
    with timer() as t_bulk:
        wg(["wg", "syncconf", ifname, str(full)], timeout=300)
    assert len(show_dump(ifname).peers) == params["peers"]
    full.unlink()
    empty.unlink()
    return {
        "bootstrap_s": t_boot[0],
        "bulk_load_s": t_bulk[0],
        "wg_set_ms": wg_set_ms,
        "agent_ms": agent_ms,
        "syncconf_ms": syncconf_ms,
        "peers_on_interface": on_interface,
        "rss_empty": rss_empty,
        "rss_loaded": rss_loaded,
        "peak_rss": proc_status()["VmHWM"],
    }


def _write_private(path: Path, text: str) -> None:
    """Write a wg configuration (it holds the throwaway interface key) readable by root only."""
    path.touch(mode=0o600)
    path.write_text(text)
