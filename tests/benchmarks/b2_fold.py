"""B2 fold: the registry and ipam stages folding a large events stream from a real Redis.

The events (a realistic mix over many nodes, see ``synthetic.py``) are appended to a
fresh ``redis-server`` with the listener's own append. The ceiling reads and decodes
the same entries the way a stage does (XRANGE in batches of the stage's size, then
``from_fields``) and does nothing else. The measured path is the real
:class:`consumers.stage.Stage`: the registry stage folds ``events`` into
``registry`` with its atomic Lua commits, then the ipam stage folds ``registry``
into ``peers``; both run in a separate process so that its peak RSS is the folds'.
A second fresh process then loads both stages' state (100,000 nodes by default)
from Redis, which is what a restarted stage holds: its RSS is the memory figure.
Last, ``wgchain audit replay`` runs as a command over the whole log (end to end: a
new process, reads, folds, compares), against the ceiling's read of the same log;
every projection must compare OK.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

import redis
import synthetic
from common import Result, child, mib, timer

from consumers.stage import BATCH_SIZE
from shared.devnet.redis_server import RedisServer
from shared.events import from_fields
from shared.redis_log import START, read_after

#: IPv4 pool of the benchmark (large enough for a million nodes).
POOL = "10.64.0.0/12"
#: Targets of issue 11: fold throughput as a fraction of the ceiling, replay seconds for a
#: million events, RSS of a process holding both stages' state at 100,000 nodes.
FOLD_TARGET: Final = 0.25
REPLAY_TARGET_S: Final = 15.0
REPLAY_EVENTS: Final = 1_000_000
RSS_TARGET_MIB: Final = 150.0


def ceiling(client: redis.Redis, stream: str) -> int:
    """Read and decode every entry of ``stream`` in stage-sized batches; the count."""
    position, count = START, 0
    while True:
        batch = read_after(client, stream, position, BATCH_SIZE)
        if not batch:
            return count
        for _, fields in batch:
            from_fields(fields)
        count += len(batch)
        position = batch[-1][0]


def run(events: int, nodes: int) -> list[Result]:
    """Fold ``events`` synthetic events over ``nodes`` nodes; the fold and memory rows."""
    params = {"events": events, "nodes": nodes, "batch": BATCH_SIZE, "pool": POOL}
    keys = synthetic.keys()
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        with timer() as t_write:
            synthetic.append(client, events, nodes)
        cpu = time.process_time()
        with timer() as t_ceiling:
            read = ceiling(client, keys.events)
        t_ceiling_cpu = time.process_time() - cpu
        assert read == events, (read, events)
        fold: dict[str, Any] = child("fold", {"redis_url": server.url, "pool": POOL})
        loaded: dict[str, Any] = child("load", {"redis_url": server.url, "pool": POOL})
        memory = _redis_memory(client, keys)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        with timer() as t_replay:
            verdicts = _replay(server.url)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        replay_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        client.close()
    fold_s = fold["registry_s"] + fold["ipam_s"]
    ratio = (events / fold_s) / (events / t_ceiling[0])
    rss = mib(loaded["rss_loaded"])
    replay_s = t_replay[0]
    rows = [
        Result(
            id="B2.fold",
            name="B2 fold (registry + ipam)",
            value=events / fold_s,
            unit="events/s",
            baseline="XRANGE + msgspec decode only (ceiling)",
            baseline_value=events / t_ceiling[0],
            better="higher",
            ratio_meaning="of the ceiling",
            params=params,
            target=f"≥ {FOLD_TARGET} of the ceiling",
            met=ratio >= FOLD_TARGET,
            extra={
                "registry_events_per_s": events / fold["registry_s"],
                "ipam_entries_per_s": fold["registry_entries"] / fold["ipam_s"],
                "registry_entries": fold["registry_entries"],
                "peers_entries": fold["peers_entries"],
                "live_nodes": fold["live_nodes"],
                "peak_rss_mib": mib(fold["peak_rss"]),
                # CPU seconds (a shared machine's wall time includes waiting for a core)
                "registry_cpu_s": fold["registry_cpu_s"],
                "ipam_cpu_s": fold["ipam_cpu_s"],
                "redis_cpu_s_whole_run": fold["redis_cpu_s"],
                "ceiling_cpu_s": t_ceiling_cpu,
                "append_s": t_write[0],
            },
        ),
        Result(
            id="B2.redis_memory",
            name=f"Memory: Redis, {nodes:,}-node registry",
            value=mib(memory["state"]),
            unit="MiB",
            baseline=f"the {events:,}-entry events stream it folds",
            baseline_value=mib(memory["events"]),
            better="lower",
            ratio_meaning="smaller than its log",
            params=params,
            extra={
                "redis_used_memory_mib": mib(memory["used_memory"]),
                "registry_stream_mib": mib(memory["registry"]),
                "peers_stream_mib": mib(memory["peers"]),
            },
        ),
        Result(
            id="B2.stage_rss",
            name=f"Memory: stage RSS, {nodes:,}-node registry",
            value=mib(loaded["rss_loaded"]),
            unit="MiB",
            baseline="the same process before loading",
            baseline_value=mib(loaded["rss_empty"]),
            better="reference",
            ratio_meaning="the empty process",
            params=params,
            target=f"≤ {RSS_TARGET_MIB:.0f} MiB" if nodes == 100_000 else "",
            met=rss <= RSS_TARGET_MIB if nodes == 100_000 else None,
            extra={
                "load_s": loaded["load_s"],
                "bytes_per_node": (loaded["rss_loaded"] - loaded["rss_empty"]) / max(1, nodes),
            },
        ),
        Result(
            id="B2.replay_1m",
            name=f"wgchain audit replay, {events:,} events",
            value=replay_s,
            unit="s",
            baseline="XRANGE + msgspec decode of the same events (ceiling)",
            baseline_value=t_ceiling[0],
            better="lower",
            ratio_meaning="of the ceiling's speed",
            params=params,
            target=f"≤ {REPLAY_TARGET_S:.0f} s" if events == REPLAY_EVENTS else "",
            met=replay_s <= REPLAY_TARGET_S if events == REPLAY_EVENTS else None,
            extra={
                "seconds_per_million_events": replay_s * 1_000_000 / events,
                "replay_cpu_s": replay_cpu,
                "verdicts": verdicts,
            },
        ),
    ]
    return rows


def _replay(redis_url: str) -> str:
    """Run ``wgchain audit replay`` over the whole log; its verdicts (all must be OK)."""
    keys = synthetic.keys()
    env = {
        **os.environ,
        "WGCHAIN_REDIS_URL": redis_url,
        "WGCHAIN_CHAIN_ID": str(keys.chain_id),
        "WGCHAIN_CONTRACT": keys.contract,
        "WGCHAIN_POOL": POOL,
    }
    wgchain = Path(sys.executable).with_name("wgchain")
    proc = subprocess.run(
        [str(wgchain), "audit", "replay", "--wait", "0", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"audit replay failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    verdicts = [f"{o['name']}: {o['status']}" for o in report["outcomes"]]
    assert all(o["status"] == "OK" for o in report["outcomes"]), verdicts
    return ", ".join(verdicts)


def _redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used so far (user + system)."""
    info: Any = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _redis_memory(client: redis.Redis, keys: Any) -> dict[str, int]:
    def usage(key: str) -> int:
        """Bytes Redis uses for ``key`` (every element counted)."""
        return int(client.memory_usage(key, samples=0) or 0)

    info: Any = client.info("memory")
    return {
        "used_memory": int(info["used_memory"]),
        "state": usage(keys.state("registry")) + usage(keys.state("ipam")),
        "events": usage(keys.events),
        "registry": usage(keys.registry),
        "peers": usage(keys.peers),
    }


def fold_child(params: dict[str, Any]) -> dict[str, Any]:
    """In the child: run both stages to the end of their input; times and peak RSS."""
    from common import proc_status

    from consumers.ipam.allocate import IpamFold
    from consumers.registry.fold import FOLD
    from consumers.stage import Stage

    client = redis.Redis.from_url(params["redis_url"])
    keys = synthetic.keys()
    registry = Stage(client, keys, FOLD)
    cpu = time.process_time()
    with timer() as t_registry:
        while registry.step(block_ms=None):
            pass
    registry_cpu = time.process_time() - cpu
    ipam = Stage(client, keys, IpamFold(params["pool"]))
    cpu = time.process_time()
    with timer() as t_ipam:
        while ipam.step(block_ms=None):
            pass
    return {
        "registry_s": t_registry[0],
        "ipam_s": t_ipam[0],
        "registry_cpu_s": registry_cpu,
        "ipam_cpu_s": time.process_time() - cpu,
        "redis_cpu_s": _redis_cpu(client),
        "registry_entries": int(client.xlen(keys.registry)),
        "peers_entries": int(client.xlen(keys.peers)),
        "live_nodes": len(registry.state.live()),
        "peak_rss": proc_status()["VmHWM"],
    }


def load_child(params: dict[str, Any]) -> dict[str, Any]:
    """In the child: RSS before and after loading both stages' state from Redis."""
    import gc

    from common import proc_status

    from consumers.ipam.allocate import IpamFold
    from consumers.registry.fold import FOLD
    from consumers.stage import Stage

    client = redis.Redis.from_url(params["redis_url"])
    keys = synthetic.keys()
    ipam_fold = IpamFold(params["pool"])
    gc.collect()
    empty = proc_status()["VmRSS"]
    with timer() as t_load:
        registry = Stage(client, keys, FOLD)
        ipam = Stage(client, keys, ipam_fold)
    gc.collect()
    loaded = proc_status()["VmRSS"]
    assert registry.state.tokens
    assert ipam.state.nodes
    return {"rss_empty": empty, "rss_loaded": loaded, "load_s": t_load[0]}
