"""B2 fold: the registry and ipam stages folding a large events stream from a real Redis.

The events (a realistic mix over many nodes, see ``synthetic.py``) are appended to a
fresh ``redis-server`` with the listener's own append. The ceiling reads and decodes
the same entries the way a stage does (XRANGE in batches of the stage's size, then
``from_fields``) and does nothing else. The measured path is the live pipeline as it is
deployed (compose's ``registry`` and ``ipam`` services): the real
:class:`consumers.stage.Stage` of each stage in its own process, both started at the
same instant and run by :meth:`Stage.run` (blocking reads, atomic commits); ipam tails
the ``registry`` stream while the registry stage writes it. ``B2.fold`` is events per
second from that instant until ipam has committed the output of the last event. Then,
on a copy of the events under another key prefix, the serial figures of before (one
process: the registry stage to the end of ``events``, then ipam to the end of
``registry``) as extras: each stage's own throughput and CPU, and their ratio to the
ceiling (``serial_ratio``). Both runs must write the same number of entries.
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
from common import Background, Result, child, mib, timer

from consumers.stage import BATCH_SIZE
from shared.devnet.redis_server import RedisServer
from shared.events import from_fields
from shared.keys import Keys
from shared.redis_log import START, read_after

#: IPv4 pool of the benchmark (large enough for a million nodes).
POOL = "10.64.0.0/12"
#: Targets of issue 11: fold throughput as a fraction of the ceiling, replay seconds for a
#: million events, RSS of a process holding both stages' state at 100,000 nodes.
FOLD_TARGET: Final = 0.25
REPLAY_TARGET_S: Final = 15.0
REPLAY_EVENTS: Final = 1_000_000
RSS_TARGET_MIB: Final = 150.0
#: Key prefix of the serial run's copy of the events (same network, same hash tag).
SERIAL_PREFIX: Final = "benchserial"
#: Lists the pipeline's stage processes and the parent meet on: "ready" (each stage, once
#: loaded), "go" (the parent, once both are ready: the measured time starts).
READY_KEY: Final = "bench:b2:ready"
GO_KEY: Final = "bench:b2:go"
#: Seconds a stage process of the pipeline may take, start to finish.
STAGE_TIMEOUT_S: Final = 1800


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
        pipeline = _pipeline(client, server.url)
        fold = _serial(client, server.url)
        for name in ("registry_entries", "peers_entries", "live_nodes"):
            assert pipeline[name] == fold[name], (name, pipeline[name], fold[name])
        loaded: dict[str, Any] = child("load", {"redis_url": server.url, "pool": POOL})
        memory = _redis_memory(client, keys)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        with timer() as t_replay:
            verdicts = _replay(server.url)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        replay_cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
        client.close()
    fold_s = fold["registry_s"] + fold["ipam_s"]
    ceiling_per_s = events / t_ceiling[0]
    pipeline_s = pipeline["ipam"]["end"] - pipeline["start"]
    ratio = (events / pipeline_s) / ceiling_per_s
    rss = mib(loaded["rss_loaded"])
    replay_s = t_replay[0]
    rows = [
        Result(
            id="B2.fold",
            name="B2 fold: registry and ipam stages, one process each, at once (events → peers)",
            value=events / pipeline_s,
            unit="events/s",
            baseline="XRANGE + msgspec decode only (ceiling)",
            baseline_value=ceiling_per_s,
            better="higher",
            ratio_meaning="of the ceiling",
            params=params,
            target=f"≥ {FOLD_TARGET} of the ceiling",
            met=ratio >= FOLD_TARGET,
            extra={
                "measured": "events / seconds from starting both stage processes together "
                "until ipam committed the output of the last event",
                "pipeline_s": pipeline_s,
                "pipeline_registry_s": pipeline["registry"]["end"] - pipeline["start"],
                "pipeline_registry_cpu_s": pipeline["registry"]["cpu_s"],
                "pipeline_ipam_cpu_s": pipeline["ipam"]["cpu_s"],
                "pipeline_registry_peak_rss_mib": mib(pipeline["registry"]["peak_rss"]),
                "pipeline_ipam_peak_rss_mib": mib(pipeline["ipam"]["peak_rss"]),
                "redis_cpu_s_pipeline": pipeline["redis_cpu_s"],
                # INFO commandstats over the pipeline: per command, calls and microseconds
                # of Redis per event (command execution only; the rest of redis_cpu_s is
                # reading, parsing and answering).
                "redis_calls_per_event": {
                    k: round(c / events, 6) for k, (c, _) in sorted(pipeline["commands"].items())
                },
                "redis_us_per_event": {
                    k: round(u / events, 3) for k, (_, u) in sorted(pipeline["commands"].items())
                },
                "redis_cpu_us_per_event": pipeline["redis_cpu_s"] * 1e6 / events,
                # The serial run (one process: registry to the end, then ipam), as before.
                "serial_events_per_s": events / fold_s,
                "serial_ratio": (events / fold_s) / ceiling_per_s,
                "registry_events_per_s": events / fold["registry_s"],
                "ipam_entries_per_s": fold["registry_entries"] / fold["ipam_s"],
                "registry_cpu_s": fold["registry_cpu_s"],
                "ipam_cpu_s": fold["ipam_cpu_s"],
                "redis_cpu_s_serial": fold["redis_cpu_s"],
                "serial_peak_rss_mib": mib(fold["peak_rss"]),
                "registry_entries": fold["registry_entries"],
                "peers_entries": fold["peers_entries"],
                "live_nodes": fold["live_nodes"],
                # CPU seconds (a shared machine's wall time includes waiting for a core)
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


def _pipeline(client: redis.Redis, redis_url: str) -> dict[str, Any]:
    """Both stages in their own process, started together; their figures and the start.

    Each process loads its stage, says it is ready and waits; once both are, the start
    (``time.monotonic``, one clock for the machine) is taken and both are let go. Each
    process runs :meth:`Stage.run` until it has committed everything: the registry stage
    its position at the last event, ipam its position at the registry stage's last output
    once the registry stage has committed the last event.
    """
    keys = synthetic.keys()
    last: Any = client.xrevrange(keys.events, count=1)
    params = {"redis_url": redis_url, "pool": POOL, "until": last[0][0].decode()}
    client.delete(READY_KEY, GO_KEY)
    procs = {name: Background("stage", {**params, "stage": name}) for name in ("registry", "ipam")}
    try:
        ready, deadline = 0, time.monotonic() + 120
        while ready < len(procs):
            if client.blpop([READY_KEY], timeout=1) is not None:
                ready += 1
            for proc in procs.values():
                if not proc.alive():
                    proc.finish()  # raises with the end of its log
            if time.monotonic() > deadline:
                raise RuntimeError("the stage processes of the pipeline did not start")
        cpu = _redis_cpu(client)
        before = _commandstats(client)
        start = time.monotonic()
        client.rpush(GO_KEY, *procs)
        answers = {}
        for name, proc in procs.items():
            proc.proc.wait(timeout=STAGE_TIMEOUT_S)
            answers[name] = proc.finish()
        commands = _commandstats(client, before)
    finally:
        for proc in procs.values():
            if proc.alive():
                proc.kill(timeout=5)
    return {
        **answers,
        "start": start,
        "redis_cpu_s": _redis_cpu(client) - cpu,
        "commands": commands,
        "registry_entries": int(client.xlen(keys.registry)),
        "peers_entries": int(client.xlen(keys.peers)),
        "live_nodes": answers["registry"]["live_nodes"],
    }


def _serial(client: redis.Redis, redis_url: str) -> dict[str, Any]:
    """The serial run on a copy of the events (key prefix :data:`SERIAL_PREFIX`): one process
    runs the registry stage to the end, then ipam; the copy is deleted after."""
    keys = synthetic.keys()
    serial = Keys(keys.chain_id, keys.contract, prefix=SERIAL_PREFIX)
    client.copy(keys.events, serial.events)
    cpu = _redis_cpu(client)
    fold: dict[str, Any] = child("fold", {"redis_url": redis_url, "pool": POOL})
    fold["redis_cpu_s"] = _redis_cpu(client) - cpu
    for key in client.scan_iter(match=f"{SERIAL_PREFIX}:*", count=1000):
        client.delete(key)
    return fold


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


def _commandstats(
    client: redis.Redis, before: dict[str, tuple[int, int]] | None = None
) -> dict[str, tuple[int, int]]:
    """(calls, usec) per command from ``INFO commandstats``; with ``before``, the difference
    (the two ``INFO`` calls left out). A command inside ``MULTI``/``EXEC`` is counted under its
    own name (and its time again in ``exec``'s)."""
    info: Any = client.info("commandstats")
    now = {
        key.removeprefix("cmdstat_"): (int(value["calls"]), int(value["usec"]))
        for key, value in info.items()
        if isinstance(value, dict)
    }
    if before is None:
        return now
    delta = {
        k: (c - before.get(k, (0, 0))[0], u - before.get(k, (0, 0))[1]) for k, (c, u) in now.items()
    }
    delta["info"] = (delta.get("info", (1, 0))[0] - 1, delta.get("info", (1, 0))[1])
    return {k: v for k, v in delta.items() if v[0] > 0}


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
    network = synthetic.keys()
    keys = Keys(network.chain_id, network.contract, prefix=SERIAL_PREFIX)
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
        "registry_entries": int(client.xlen(keys.registry)),
        "peers_entries": int(client.xlen(keys.peers)),
        "live_nodes": len(registry.state.live()),
        "peak_rss": proc_status()["VmHWM"],
    }


def stage_child(params: dict[str, Any]) -> dict[str, Any]:
    """In the child: one stage of the pipeline (``params["stage"]``) as its service runs it,
    from the parent's go until it has committed everything (see :func:`_pipeline`)."""
    import threading

    from common import proc_status

    from consumers.ipam.allocate import IpamFold
    from consumers.registry.fold import FOLD
    from consumers.stage import Stage
    from shared.redis_log import connect

    name, until = params["stage"], params["until"]
    client = connect(params["redis_url"])
    keys = synthetic.keys()
    stage: Stage[Any] = Stage(
        client, keys, FOLD if name == "registry" else IpamFold(params["pool"])
    )
    stop = threading.Event()
    registry_position = keys.position("registry")

    def done(_: object) -> None:
        """After each step: stop once everything this stage will ever get is committed."""
        if name == "registry":
            finished = stage.position == until
        else:  # the registry stage committed the last event, and ipam its last output
            pipe = client.pipeline(transaction=False)
            pipe.get(registry_position)
            pipe.xrevrange(keys.registry, count=1)
            position, last = pipe.execute()
            finished = (
                position == until.encode() and bool(last) and stage.position == last[0][0].decode()
            )
        if finished:
            stop.set()

    stage.after_step = done
    client.rpush(READY_KEY, name)
    if client.blpop([GO_KEY], timeout=120) is None:
        raise RuntimeError("no go from the parent")
    cpu = time.process_time()
    stage.run(stop)
    end = time.monotonic()
    return {
        "end": end,
        "cpu_s": time.process_time() - cpu,
        "peak_rss": proc_status()["VmHWM"],
        "live_nodes": len(stage.state.live()) if name == "registry" else 0,
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
