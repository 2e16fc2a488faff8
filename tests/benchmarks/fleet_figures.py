"""B6's figures from one network's run: latency, Redis cost, bytes, CPU and memory per agent.

Per change (the series only): Redis CPU ms and commands (INFO deltas; the commands
that took most of its time), bytes each agent read (its sockets), CPU ms each agent
spent (its processes' CPU over the series / agents), and the pipeline's CPU. Idle:
Redis's CPU and commands per second with nothing happening (what a fleet costs
Redis just by being there). Memory: the agent processes' RSS after the bootstrap
minus their RSS before any agent, per agent. And :func:`check_peers`: at the end,
every agent's peers equal what a fold of the stream says they should be.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

import fleet_stats as fs
import redis
from common import mib, percentiles
from fleet import peer_digest
from fleet_chain import node_of

from shared.events import AllocationPending, PeerRemove, PeerUpsert, from_fields
from shared.redis_log import as_str


def figures(net: Any) -> tuple[dict[str, Any], dict[int, float], dict[int, float]]:
    """(extra figures, latency percentiles, pipeline-floor percentiles) of ``net``'s run."""
    samples = net.samples
    changes = max(1, len(samples))
    answers: dict[str, Any] = net.answers
    fleet = {n: a for n, a in answers.items() if n.startswith("agents")}
    wg = {n: a for n, a in answers.items() if n.startswith("wg")}
    agents = {node: a for ans in fleet.values() for node, a in ans["agents"].items()}
    wg_agents = {node: a for ans in wg.values() for node, a in ans["agents"].items()}
    everyone = {**agents, **wg_agents}

    latency, floor, median_agent, wg_latency = [], [], [], []
    by_kind: dict[str, list[float]] = {}
    for (submitted, entry_at, entry_id), kind in zip(samples, net.kinds, strict=True):
        applied = {n: fs.first_applied(a["applied"], entry_id) for n, a in everyone.items()}
        missing = [n for n, t in applied.items() if t is None]
        if missing:
            raise RuntimeError(f"B6: {len(missing)} agents never noted applying {entry_id}")
        times = {n: t - submitted for n, t in applied.items() if t is not None}
        slowest = max(times.values()) * 1000
        latency.append(slowest)
        by_kind.setdefault(kind, []).append(slowest)
        floor.append((entry_at - submitted) * 1000)
        median_agent.append(statistics.median(times[n] for n in agents) * 1000)
        if wg_agents:
            wg_latency.append(max(times[n] for n in wg_agents) * 1000)
    lat, flo = percentiles(latency), percentiles(floor)

    n = max(1, len(agents))
    before, cpu_before = net.before
    after, cpu_after = net.after
    series = before.delta(after)
    idle = net.idle
    read = sum(
        b1 - b0
        for ans in fleet.values()
        for b0, b1 in zip(ans["marks"][0]["bytes"], ans["marks"][1]["bytes"], strict=True)
    )
    agent_cpu = sum(cpu_after[k] - cpu_before[k] for k in fleet)
    stages_cpu = cpu_after["stages"] - cpu_before["stages"]
    wall = max(series["seconds"], 1e-9)
    rss_empty = sum(ans["rss_empty"] for ans in fleet.values())
    extra: dict[str, Any] = {
        "p50_ms": lat[50],
        "p99_ms": lat[99],
        "pipeline_p50_ms": flo[50],
        "pipeline_p99_ms": flo[99],
        "median_agent_p50_ms": percentiles(median_agent)[50],
        "changes_measured": len(samples),
    }
    if wg_latency:
        extra["wg_hosts_p50_ms"] = percentiles(wg_latency)[50]
        extra["wg_hosts_p99_ms"] = percentiles(wg_latency)[99]
    if len(by_kind) > 1:
        for kind, values in by_kind.items():
            p = percentiles(values)
            extra[f"{kind}_change_p50_ms"], extra[f"{kind}_change_p99_ms"] = p[50], p[99]
    extra.update(
        {
            "redis_cpu_ms_per_change": series["cpu_s"] * 1000 / changes,
            "redis_commands_per_change": series["commands"] / changes,
            "redis_top_commands_per_change": fs.top_commands(series, changes),
            "redis_sent_bytes_per_change_per_agent": series["net_out"]
            / changes
            / max(1, len(everyone)),
            "agent_read_bytes_per_change": read / changes / n,
            "agent_cpu_ms_per_change": agent_cpu * 1000 / changes / n,
            "pipeline_cpu_ms_per_change": stages_cpu * 1000 / changes,
            "cpu_share_of_machine_ours": (series["cpu_s"] + agent_cpu + stages_cpu)
            / (wall * (os.cpu_count() or 1)),
            "cpu_busy_machine": (cpu_after["machine_busy"] - cpu_before["machine_busy"])
            / max(1e-9, cpu_after["machine_total"] - cpu_before["machine_total"]),
            "redis_idle_cpu_pct": 100 * idle["cpu_s"] / max(idle["seconds"], 1e-9),
            "agent_idle_cpu_ms_per_agent_per_s": sum(
                net.idle_cpu[1][k] - net.idle_cpu[0][k] for k in fleet
            )
            * 1000
            / max(idle["seconds"], 1e-9)
            / n,
            "redis_idle_commands_per_s": idle["commands"] / max(idle["seconds"], 1e-9),
            "redis_idle_top_commands_per_s": fs.top_commands(idle, max(idle["seconds"], 1e-9)),
            "memory_per_agent_mib": mib(net.rss_after_bootstrap - rss_empty) / n,
            "agent_processes_rss_mib": mib(net.rss_after_bootstrap),
            "agent_process_peak_rss_mib": mib(max(ans["rss_peak"] for ans in fleet.values())),
            "applied_times_sampled": sum(a["sampled"] for a in everyone.values()),
        }
    )
    # extrapolation (README): Redis's cost per agent, and what one Redis core serves
    hosts = max(1, len(everyone))
    per_change = series["cpu_s"] / changes / hosts
    per_idle_s = idle["cpu_s"] / max(idle["seconds"], 1e-9) / hosts
    extra["redis_cpu_us_per_agent_per_change"] = per_change * 1e6
    extra["redis_idle_cpu_us_per_agent_per_s"] = per_idle_s * 1e6
    extra["one_redis_core_changes_per_s_at_1000_agents"] = max(0.0, 1 - 1000 * per_idle_s) / (
        1000 * max(per_change, 1e-9)
    )
    extra = {k: round(v, 3) if isinstance(v, float) else v for k, v in extra.items()}
    return extra, lat, flo


def check_peers(net: Any, client: redis.Redis) -> int:
    """Every agent's peers (twin or interface) must be what the stream says it should be."""
    keys: dict[str, str] = {}
    low = "-"
    while page := client.xrange(net.keys.peers, min=low, count=10_000):
        for _id, fields in page:  # type: ignore[union-attr]
            entry = from_fields(fields)
            if isinstance(entry, PeerUpsert):
                keys[entry.node_id] = entry.public_key
            elif isinstance(entry, PeerRemove | AllocationPending):
                keys.pop(entry.node_id, None)
        low = f"({as_str(page[-1][0])}"  # type: ignore[index]
    reports = {n: a for ans in net.answers.values() for n, a in ans.get("agents", {}).items()}
    if net.kind == "hub":
        hubs = peer_digest([keys[node_of(h)] for h in range(1, net.hubs + 1)])
        wanted = dict.fromkeys(reports, hubs)
    else:  # everyone but the agent itself
        every = list(keys.values())
        wanted = {n: peer_digest([k for k in every if k != keys.get(n)]) for n in reports}
    wrong = [n for n, a in reports.items() if a["peers"] and a["peers"] != wanted[n]]
    if wrong:
        raise RuntimeError(
            f"B6 {net.kind}: {len(wrong)} agents said they applied every change but their "
            f"peers differ from the stream's (e.g. {', '.join(sorted(wrong)[:3])})"
        )
    return sum(1 for a in reports.values() if a["peers"])
