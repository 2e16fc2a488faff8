"""B6's measuring instruments: Redis INFO deltas, processes' CPU and RSS, the agents' progress.

Everything here reads the server's own counters or ``/proc``: the measurement adds
no load to Redis beyond one ``INFO`` at each end of a window.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from shared.redis_log import id_key

#: Clock ticks per second of /proc/<pid>/stat's CPU times.
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RedisSample:
    """Redis's cumulative counters at one moment."""

    at: float
    cpu_s: float
    calls: dict[str, int]
    usec: dict[str, int]
    net_out: int
    clients: int

    @staticmethod
    def take(client: redis.Redis) -> RedisSample:
        info: Any = client.info("all")
        calls, usec = {}, {}
        for key, value in info.items():
            if key.startswith("cmdstat_") and isinstance(value, dict):
                name = key.removeprefix("cmdstat_")
                calls[name] = int(value.get("calls", 0))
                usec[name] = int(value.get("usec", 0))
        return RedisSample(
            at=time.monotonic(),
            cpu_s=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
            calls=calls,
            usec=usec,
            net_out=int(info["total_net_output_bytes"]),
            clients=int(info["connected_clients"]),
        )

    def delta(self, later: RedisSample) -> dict[str, Any]:
        """What Redis did between this sample and ``later`` (the INFO calls left out)."""
        calls = {k: v - self.calls.get(k, 0) for k, v in later.calls.items()}
        usec = {k: v - self.usec.get(k, 0) for k, v in later.usec.items()}
        calls["info"] = max(0, calls.get("info", 0) - 1)
        return {
            "seconds": later.at - self.at,
            "cpu_s": later.cpu_s - self.cpu_s,
            "commands": sum(calls.values()),
            "calls": {k: v for k, v in calls.items() if v},
            "usec": {k: v for k, v in usec.items() if v},
            "net_out": later.net_out - self.net_out,
        }


def top_commands(delta: dict[str, Any], per: float, count: int = 5) -> dict[str, float]:
    """The commands that took most of Redis's time: name -> calls per ``per``."""
    ranked = sorted(set(delta["usec"]) - {"info"}, key=lambda k: -delta["usec"][k])[:count]
    return {name: round(delta["calls"].get(name, 0) / per, 1) for name in ranked}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / TICKS, sum(fields) / TICKS


def rss_bytes(pid: int) -> int:
    """VmRSS of process ``pid`` (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return 0


def mem_available() -> int:
    """MemAvailable of the machine, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def read_progress(folder: Path, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The agent processes' latest progress files (a missing or half-written one is left out)."""
    out = {}
    for name in names:
        try:
            out[name] = json.loads((folder / f"progress-{name}.json").read_text())
        except (FileNotFoundError, ValueError):
            continue
    return out


def reached(progress: dict[str, dict[str, Any]], names: Sequence[str], target: str) -> bool:
    """Whether every named process reports all its agents at or past stream id ``target``."""
    goal = id_key(target)
    return all(name in progress and tuple(progress[name]["min_applied"]) >= goal for name in names)


def first_applied(applied: list[list[float]], target: str) -> float | None:
    """When an agent's applied position first reached ``target`` (its marks from ``fleet``)."""
    goal = id_key(target)
    times = [t for t, ms, seq in ((m[0], *m[1]) for m in applied) if (ms, seq) >= goal]
    return min(times) if times else None
