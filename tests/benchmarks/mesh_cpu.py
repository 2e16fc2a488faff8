"""Agent CPU per change: N real agents in one process on a mesh or a hub network.

Not a row of ``run.py`` (no id): a quick, repeatable look at what B6's agent CPU per
change is made of, without the chain and the pipeline (the README's "Mesh agent CPU"
and "Hub agent CPU"). A real ``redis-server`` on a free port, a ``peers`` stream of
``--members`` members written directly, the agents (``Agent`` on the in-memory twin, or
file-only) on threads of this process, then ``--changes`` key rotations, :data:`GAP`
apart as in B6, each awaited until every agent applied it.

On the mesh (``--hubs 0``) the first ``--agents`` members are the agents (with their
real keys) and the rotations are of other members (every agent applies each). With
``--hubs H`` it is B6's hub network: members 0..H-1 are the hubs (no agent), the next
``--agents`` are spokes; ``--kind hub`` rotates hubs (every spoke applies each),
``--kind other`` other members (nothing to apply: the loop's ``advance``), ``--kind
both`` alternates them as B6 does. Logging as in B6 (WARNING, ``--log-level`` to change:
INFO is what a host runs; its lines go to stderr). Printed as one JSON line: the process's CPU from
the first change until the file writer thread is idle again (the bootstrap excluded),
per agent per change; the writer thread's share; the files written per agent; RSS per
agent. Run it from the repository::

    .venv/bin/python tests/benchmarks/mesh_cpu.py --agents 50 --changes 20
    .venv/bin/python tests/benchmarks/mesh_cpu.py --hubs 10 --members 100000 \
        --agents 125 --changes 40 --kind hub

For a profile, ``--ready-file F`` writes this process's pid to F just before the changes
(attach ``py-spy record --gil -p PID`` then).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

import redis
from common import proc_status, quiet_logs

from consumers.agent import files
from consumers.agent.agent import Agent, AgentConfig
from consumers.agent.desired import Policy
from consumers.agent.keys import generate_private_key_file
from consumers.agent.wg import MemoryWireGuard
from shared.devnet.redis_server import RedisServer
from shared.events import PeerUpsert, to_fields
from shared.keys import Keys

POOL: Final = "10.64.0.0/14"
#: Seconds between two changes (B6's gap).
GAP: Final = 0.2
#: Seconds after the last change for its file writes (1 s debounce, the writer's wait).
DRAIN_S: Final = 2.5


def address(i: int) -> str:
    return f"10.64.{i // 250}.{i % 250 + 1}"


def random_key(rng: random.Random) -> str:
    return base64.b64encode(rng.randbytes(32)).decode()


def cpu_seconds() -> tuple[float, float]:
    """This process's (user + system, system) CPU seconds."""
    t = os.times()
    return t.user + t.system, t.system


def thread_cpu_seconds(native_id: int) -> float:
    """CPU seconds of one thread of this process."""
    return sum(threads_cpu_seconds([native_id]))


def threads_cpu_seconds(native_ids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these threads of this process, together."""
    user = system = 0
    for native_id in native_ids:
        stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        user, system = user + int(fields[11]), system + int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


class WriteCounter:
    """Counts the whole-file writes (config, state snapshot, journal rewrite) by wrapping
    ``files.write_atomic`` (looked up through the module at every write)."""

    def __init__(self) -> None:
        self.counts = {"config": 0, "state": 0, "journal": 0}
        self._write = files.write_atomic
        files.write_atomic = self._counted  # type: ignore[assignment]

    def _counted(self, path: Path, *args: Any, **kwargs: Any) -> None:
        name = os.fspath(path)
        kind = "config" if name.endswith(".conf") else "journal" if "journal" in name else "state"
        self.counts[kind] += 1
        self._write(path, *args, **kwargs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--members", type=int, default=10_000)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--file-only", action="store_true", help="file-only agents (no twin)")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the bootstrap")
    ap.add_argument("--ready-file", default="", help="gets the pid just before the changes")
    ap.add_argument("--hubs", type=int, default=0, help="a hub network of this many hubs")
    ap.add_argument("--kind", choices=("hub", "other", "both"), default="both")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()
    os.environ["BENCH_LOG_LEVEL"] = args.log_level
    quiet_logs()
    load = os.getloadavg()
    rng = random.Random(args.seed)
    writes = WriteCounter()
    work = Path(tempfile.mkdtemp(prefix="wgchain-meshcpu-"))
    keys = Keys(31337, "0x" + secrets.token_hex(20))
    try:
        with RedisServer() as server:
            client = redis.Redis.from_url(server.url)
            hubs = args.hubs
            first, end = hubs, hubs + args.agents  # the agents' members
            own = [generate_private_key_file(work / f"node-{i}.key") for i in range(first, end)]
            members = [random_key(rng) for _ in range(hubs)] + own
            members += [random_key(rng) for _ in range(args.members - end)]
            policy = Policy(pool=POOL)
            if hubs:
                policy = Policy(
                    pool=POOL, topology="hub", hubs=tuple(f"node-{i}" for i in range(hubs))
                )
            pipe = client.pipeline(transaction=False)
            for i, key in enumerate(members):
                pipe.xadd(
                    keys.peers, to_fields(PeerUpsert(f"node-{i}", key, address(i), "0-1", "0-1", 1))
                )  # type: ignore[arg-type]
            last = pipe.execute()[-1].decode()
            rss_empty = proc_status()["VmRSS"]
            agents = [
                Agent(
                    AgentConfig(
                        node_id=f"node-{i}",
                        interface=f"wgm{i}",
                        private_key_file=work / f"node-{i}.key",
                        keys=keys,
                        policy=policy,
                        config_dir=work / "conf" / f"node-{i}",
                        file_only=args.file_only,
                        reconcile_interval=3600,
                    ),
                    redis.Redis.from_url(server.url),
                    None if args.file_only else MemoryWireGuard(),
                )
                for i in range(first, end)
            ]
            stop = threading.Event()
            threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in agents]

            def applied(position: str, timeout: float = 600.0) -> None:
                deadline = time.monotonic() + timeout
                while any(a.applied_position != position for a in agents):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"not every agent applied {position} in {timeout:g} s")
                    time.sleep(0.005)

            started = time.monotonic()
            for thread in threads:
                thread.start()
            applied(last)
            bootstrap_s = time.monotonic() - started
            time.sleep(args.settle)  # the bootstrap's file writes
            writer = next(t for t in threading.enumerate() if t.name == "wgchain-file-writer")
            assert writer.native_id is not None
            rss_boot = proc_status()["VmRSS"]
            if args.ready_file:
                Path(args.ready_file).write_text(str(os.getpid()))
            twins = [a.wg for a in agents if isinstance(a.wg, MemoryWireGuard)]
            tids = [t.native_id for t in threads if t.native_id is not None]
            (cpu0, sys0), writer0, main0 = (
                cpu_seconds(),
                thread_cpu_seconds(writer.native_id),
                time.thread_time(),
            )
            agents0 = threads_cpu_seconds(tids)
            counts0 = dict(writes.counts)
            started = time.monotonic()
            for block in range(2, args.changes + 2):
                time.sleep(GAP)
                for twin in twins:
                    twin.calls.clear()  # (the twin's call log would only grow)
                if hubs and (args.kind == "hub" or (args.kind == "both" and block % 2 == 0)):
                    i = rng.randrange(hubs)
                else:
                    i = rng.randrange(end, args.members)
                upsert = PeerUpsert(f"node-{i}", random_key(rng), address(i), "0-1", "0-1", block)
                applied(client.xadd(keys.peers, to_fields(upsert)).decode())  # type: ignore[arg-type,union-attr]
            time.sleep(DRAIN_S)
            pending = [(a.files, kind) for a in agents for kind in ("config", "state")]
            while any(files.Writer.shared().busy(key) for key in pending):
                time.sleep(0.05)
            (cpu1, sys1), writer1, main1 = (
                cpu_seconds(),
                thread_cpu_seconds(writer.native_id),
                time.thread_time(),
            )
            agents1 = threads_cpu_seconds(tids)
            series_s = time.monotonic() - started
            rss_end = proc_status()["VmRSS"]
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    per = args.agents * args.changes

    def ms(seconds: float) -> float:
        return round(1000 * seconds / per, 3)

    print(
        json.dumps(
            {
                "agents": args.agents,
                "members": args.members,
                "changes": args.changes,
                "mode": "file-only" if args.file_only else "MemoryWireGuard",
                "network": f"hub ({args.hubs} hubs), changes: {args.kind}" if args.hubs else "mesh",
                "log_level": args.log_level,
                "load_average_at_start": [round(x, 2) for x in load],
                "bootstrap_s": round(bootstrap_s, 2),
                "series_s": round(series_s, 2),
                "cpu_ms_per_agent_per_change": ms(cpu1 - cpu0 - (main1 - main0)),
                "of_which_system_ms": ms(sys1 - sys0),
                "of_which_file_writer_thread_ms": ms(writer1 - writer0),
                "of_which_agent_threads_user_ms": ms(agents1[0] - agents0[0]),
                "of_which_agent_threads_system_ms": ms(agents1[1] - agents0[1]),
                "this_script_main_thread_ms": ms(main1 - main0),
                "files_written_per_agent": {
                    k: round((writes.counts[k] - counts0[k]) / args.agents, 2) for k in counts0
                },
                "rss_mib_per_agent": round((rss_boot - rss_empty) / args.agents / 2**20, 2),
                "rss_mib_per_agent_after": round((rss_end - rss_empty) / args.agents / 2**20, 2),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
