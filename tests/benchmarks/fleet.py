"""B6's agent side: many real agents in one process (``child.py fleet``), watched from inside.

Each agent is the real ``Agent`` (``watch.agent_class``) with its own Redis
connection, running ``Agent.run`` in its own thread, on the in-memory WireGuard
twin (``MemoryWireGuard``), or on a real ``wireguard-go`` interface (the process
then runs in that host's network namespace), or file-only. Nothing here polls
Redis: when an agent applied an entry is noted in-process (``watch.py``).

The process talks to the benchmark through files in ``params["dir"]``:

- it rewrites ``progress-<name>.json`` every :data:`PROGRESS_SECONDS`: how many agents
  run, the lowest applied position over its agents, its RSS, the agents whose thread
  died, and the marks it has taken;
- when the file ``mark-<k>`` appears it notes every agent's byte count (the start and
  the end of the measured series), and acknowledges in its progress;
- above ``rss_cap`` bytes of RSS it writes why in its progress and exits at once (3),
  so that an agent that needs too much memory ends the run with a clear row instead
  of pushing the machine out of memory.

On SIGTERM it stops its agents and prints, per agent, every applied position with
its time, a digest of its peers' keys (the twin's, or the real interface's), and the
bytes read from Redis at each mark.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Final

import watch
from common import proc_status

from shared.keys import Keys

#: Seconds between two rewrites of the progress file.
PROGRESS_SECONDS: Final = 0.05
#: Seconds between the sampler's reads of the agents' positions (only a fallback: the
#: hook notes the exact time; a slower sampler leaves more CPU to 125 agents).
SAMPLE_SECONDS: Final = 0.05
#: Seconds each agent thread may take to stop.
JOIN_SECONDS: Final = 30.0


def _min_position(agents: list[Any]) -> tuple[int, int]:
    """The lowest applied position over ``agents`` ((0, 0) if one has applied nothing)."""
    return min((a.bench_log.last for a in agents), default=(0, 0))


def peer_digest(keys: list[str]) -> str:
    """A digest of a set of peer public keys (to compare an agent's peers with the stream)."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def _wg_peers(ifname: str) -> list[str]:
    """The public keys of a real interface's peers."""
    out = subprocess.run(
        ["wg", "show", ifname, "peers"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return out.split()


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def fleet_child(params: dict[str, Any]) -> dict[str, Any]:
    """Run ``params["agents"]`` until SIGTERM (see the module docstring)."""
    from consumers.agent.agent import AgentConfig
    from consumers.agent.desired import Policy
    from consumers.agent.wg import MemoryWireGuard, Wg
    from shared.cmdline import stop_event

    stop = stop_event()
    folder = Path(params["dir"])
    name = params["name"]
    progress = folder / f"progress-{name}.json"
    keys = Keys(params["chain_id"], params["contract"])
    policy = Policy(**params["policy"])
    mode = params["mode"]
    cap = int(params["rss_cap"])
    rss_empty = proc_status()["VmRSS"]
    watched = watch.agent_class()
    agents: list[Any] = []
    twins: list[Any] = []
    wires: list[Any] = []  # per agent: its twin, or None (a real interface, or file-only)
    boxes: list[list[int]] = []
    threads: list[threading.Thread] = []
    for spec in params["agents"]:
        config = AgentConfig(
            node_id=spec["node"],
            interface=spec["interface"],
            private_key_file=Path(spec["key_file"]),
            keys=keys,
            policy=policy,
            config_dir=Path(spec["config_dir"]),
            file_only=mode == "file",
            reconcile_interval=float(params["reconcile_interval"]),
        )
        box = [0]
        client = watch.counting_client(params["redis_url"], box)
        wireguard = {"memory": MemoryWireGuard, "wireguard": Wg}.get(mode)
        twin = wireguard() if wireguard else None
        agent = watched(config, client, twin)
        agents.append(agent)
        wires.append(twin if isinstance(twin, MemoryWireGuard) else None)
        if isinstance(twin, MemoryWireGuard):
            twins.append(twin)
        boxes.append(box)
        threads.append(threading.Thread(target=agent.run, args=(stop,), daemon=True))
    for thread in threads:
        thread.start()
    sampler = watch.Sampler(agents, stop, interval=SAMPLE_SECONDS)
    sampler.start()

    marks: list[dict[str, Any]] = []
    peak = rss_empty
    oom = ""
    while not stop.wait(PROGRESS_SECONDS):
        for twin in twins:
            twin.calls.clear()  # the twin's call log (for unit tests) would only grow
        rss = proc_status()["VmRSS"]
        peak = max(peak, rss)
        mark = folder / f"mark-{len(marks)}"
        if mark.exists():
            marks.append({"at": time.time(), "bytes": [b[0] for b in boxes], "rss": rss})
        if rss > cap:
            oom = (
                f"out of memory: process {name} with {len(agents)} agents reached "
                f"{rss / 2**20:,.0f} MiB RSS, above its cap of {cap / 2**20:,.0f} MiB"
            )
        low = _min_position(agents)
        _write(
            progress,
            {
                "agents": len(agents),
                "min_applied": list(low),
                "rss": rss,
                "rss_empty": rss_empty,
                "dead": sum(not t.is_alive() for t in threads),
                "marks": len(marks),
                "oom": oom,
                "errors": sorted({str(getattr(a, "last_error", "")) for a in agents} - {""})[:3],
            },
        )
        if oom:
            os._exit(3)  # at once: the agents' threads must not grow further
    for thread in threads:
        thread.join(timeout=JOIN_SECONDS)
    digests = [
        peer_digest(list(twin.peers) if twin is not None else _wg_peers(spec["interface"]))
        if mode != "file"
        else ""
        for spec, twin in zip(params["agents"], wires, strict=True)
    ]
    return {
        "rss_empty": rss_empty,
        "rss_end": proc_status()["VmRSS"],
        "rss_peak": max(peak, proc_status()["VmHWM"]),
        "marks": marks,
        "agents": {
            spec["node"]: {
                "applied": agent.bench_log.marks,
                "sampled": agent.bench_log.sampled,
                "peers": digest,
            }
            for spec, agent, digest in zip(params["agents"], agents, digests, strict=True)
        },
    }
