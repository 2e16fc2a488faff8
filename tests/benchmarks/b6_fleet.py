"""B6 fleet: 1,000 real agents and 2 wireguard-go hosts tailing one Redis, chain -> all agents.

Per network (a 10,000-member mesh, ``B6.mesh_1000``; a 100,000-member hub network
with 10 hubs whose agents are spokes, ``B6.hub_1000``), from scratch:

1. a real anvil, a fresh ``redis-server``, and listener + registry + ipam in one
   process (``wgchain run``'s stage threads, confirmations 0);
2. the population as real chain logs: ``FleetEmitter.sol`` grants every member in
   transactions of 500 logs (each member its own owner and key; the agents' members
   carry their hosts' real public keys), folded by the real stages into ``peers``;
3. the agents (``fleet.py``): the real ``Agent`` on the in-memory WireGuard twin, in
   at most 8 processes, plus 2 agents on real ``wireguard-go`` interfaces in network
   namespaces; they bootstrap from the stream until every agent has applied the last
   population entry (the bootstrap time);
4. an idle window (Redis's load with nothing happening), then a series of real key
   rotations, one at a time: on the mesh, random members that are not agents (every
   agent applies each); on the hub network alternately a hub (every spoke applies it)
   and another spoke (no agent has anything to apply, each still reads it).

Latency of a change: from the rotation's submission to the moment the last agent
declared it applied (``applied_position`` reached its ``peers`` entry, noted in the
agent's process: ``watch.py``); the baseline is the pipeline alone (submission ->
the ``peers`` entry in Redis, from its stream id). Redis CPU, commands and bytes sent
come from INFO deltas over the series; bytes an agent reads are counted on its
sockets; memory per agent is (RSS of the agent processes - their RSS before any
agent) / agents. An agent process above its memory cap ends the run with an
"out of memory" row; a bootstrap or a change that does not converge in time ends it
with a "did not converge" row: the benchmark never hangs nor swaps the machine.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import fleet_stats as fs
import redis
from common import Background, Result
from fleet_chain import POOL, FleetChain, node_of, random_key
from fleet_figures import check_peers, figures

from shared.devnet.anvil import Anvil
from shared.devnet.netns import Lab, available
from shared.devnet.redis_server import RedisServer
from shared.events import PeerUpsert, from_fields
from shared.keys import Keys
from shared.redis_log import as_str, id_key

#: Seconds between the parent's looks at the agents' progress files.
POLL: Final = 0.01
#: Seconds between two measured changes (every agent is idle when the next comes).
GAP: Final = 0.2
#: Seconds the pipeline may take to fold the population.
POPULATION_TIMEOUT: Final = 900.0
#: The parent kills an agent process whose RSS passes its cap by this factor (backstop).
KILL_FACTOR: Final = 1.25
#: The run stops when the machine has less than this many bytes available.
MIN_AVAILABLE: Final = 1 << 30
#: RSS cap of the process of one agent on a real wireguard-go host (bytes).
WG_HOST_RSS_CAP: Final = 4 << 30
#: Seconds a fleet process may take to stop: each of its agents writes its config and state
#: files as it stops, and 125 agents of the 10,000-member mesh write 250 files of 10,000
#: peers (over 120 s on a loaded 2-core machine: the process was killed, its answer lost).
STOP_TIMEOUT_S: Final = 900.0
#: Goal of issue 10 for the hub network (ms, p99).
TARGET_HUB_P99_MS: Final = 1000.0


class NotConverged(Exception):
    """The fleet did not get there (timeout, out of memory, a process died)."""


def run(
    agents: int,
    procs: int,
    mesh_members: int,
    hub_members: int,
    hubs: int,
    changes: int,
    wg_hosts: int,
    boot_timeout: float,
    change_timeout: float,
    memory_gib: float,
    idle_seconds: float,
    file_only: bool,
) -> list[Result]:
    """Both networks (a size of 0 members leaves one out); one row each."""
    sizes = {
        "agents": agents,
        "agent_processes": procs,
        "changes": changes,
        "wireguard_hosts": wg_hosts,
        "bootstrap_timeout_s": boot_timeout,
        "change_timeout_s": change_timeout,
        "memory_budget_gib": memory_gib,
        "mode": "file-only" if file_only else "MemoryWireGuard",
    }
    rows = []
    if mesh_members > 0:
        mesh = {**sizes, "network": "mesh", "members": mesh_members}
        rows.append(Network(mesh, idle_seconds).row("B6.mesh_1000"))
    if hub_members > 0:
        hub = {**sizes, "network": "hub", "members": hub_members, "hubs": hubs}
        rows.append(Network(hub, idle_seconds).row("B6.hub_1000"))
    return rows


class Network:
    """One network's run: chain, pipeline, agents, series; see the module docstring."""

    def __init__(self, params: dict[str, Any], idle_seconds: float) -> None:
        self.params = params
        self.kind = params["network"]
        self.idle_seconds = idle_seconds
        self.hubs = params.get("hubs", 0)
        self.members = params["members"]
        n_agents = params["agents"]
        n_wg = params["wireguard_hosts"]
        if n_wg:
            ok, why = available()
            if not ok:
                params["wireguard_hosts_skipped"] = why
                n_wg = 0
        self.n_wg = n_wg
        #: tokens 1..hubs are the hubs (no agent), then the agents, then the wg hosts
        self.agent_tokens = list(range(self.hubs + 1, self.hubs + n_agents + 1))
        self.wg_tokens = list(range(self.hubs + n_agents + 1, self.hubs + n_agents + n_wg + 1))
        self.first_other = self.hubs + n_agents + n_wg + 1
        if self.first_other > self.members:
            raise ValueError(
                f"B6 {self.kind}: {self.members} members cannot hold {self.hubs} hubs, "
                f"{n_agents} agents and {n_wg} wireguard-go hosts plus other members"
            )
        self.workdir = Path(tempfile.mkdtemp(prefix=f"wgchain-b6{self.kind}-"))
        self.children: dict[str, Background] = {}
        self.started = time.monotonic()
        self.extra: dict[str, Any] = {}
        self.samples: list[tuple[float, float, str]] = []
        self.kinds: list[str] = []

    # --- the run ---------------------------------------------------------------------

    def phase(self, what: str) -> None:
        """Note how long the run has taken when ``what`` is done (extra ``phases_s``)."""
        phases = self.extra.setdefault("phases_s", {})
        phases[what] = round(time.monotonic() - self.started, 1)

    def row(self, row_id: str) -> Result:
        lab = Lab(prefix=f"wgcb6{secrets.token_hex(2)}") if self.n_wg else None
        try:
            self._run(lab)
        except NotConverged as exc:
            return self._failed(row_id, str(exc))
        finally:
            for background in self.children.values():
                with contextlib.suppress(Exception):
                    background.kill(timeout=5)
            if lab is not None:
                lab.cleanup()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self._result(row_id)

    def _run(self, lab: Lab | None) -> None:
        from consumers.agent.keys import generate_private_key_file

        rng = random.Random(6)
        with Anvil() as chain, RedisServer() as server:
            emitter = FleetChain(chain)
            self.keys = Keys(chain.chain_id, emitter.address.lower())
            client = redis.Redis.from_url(server.url)
            own: dict[int, str] = {}
            for token in self.agent_tokens + self.wg_tokens:
                own[token] = generate_private_key_file(self.workdir / f"{node_of(token)}.key")
            self._start("stages", "fleet_stages", self._stages_params(chain, server, emitter))
            started = time.monotonic()
            keys = [own.get(t) or random_key(rng) for t in range(1, self.members + 1)]
            emitter.grant(keys)
            self.extra["population_chain_s"] = time.monotonic() - started
            self._wait(
                lambda: client.xlen(self.keys.peers) >= self.members,
                POPULATION_TIMEOUT,
                f"the pipeline did not fold the {self.members:,} grants",
            )
            self.extra["population_s"] = time.monotonic() - started
            self.extra["population"] = "real chain logs (FleetEmitter) via listener+registry+ipam"
            last = as_str(client.xrevrange(self.keys.peers, count=1)[0][0])  # type: ignore[index]
            self.phase("populated")
            hosts = self._wg_hosts(lab)
            started = time.monotonic()
            self._start_agents(server, hosts)
            self._wait_applied(last, self.params["bootstrap_timeout_s"], "bootstrap")
            self.extra["bootstrap_s"] = time.monotonic() - started
            self.rss_after_bootstrap = self._agent_rss()
            self.phase("bootstrapped")
            idle, cpu = fs.RedisSample.take(client), self._cpu()
            time.sleep(self.idle_seconds)
            self.idle = idle.delta(fs.RedisSample.take(client))
            self.idle_cpu = cpu, self._cpu()
            self._mark(0)
            self.before = fs.RedisSample.take(client), self._cpu()
            self._series(emitter, client, last, rng)
            self.after = fs.RedisSample.take(client), self._cpu()
            self.phase("series")
            self._mark(1)
            for background in self.children.values():
                background.terminate()  # all at once: each takes a moment to stop
            self.answers = {
                name: bg.finish(timeout=STOP_TIMEOUT_S) for name, bg in self.children.items()
            }
            self.children.clear()
            self.phase("stopped")
            self.extra["peers_checked"] = check_peers(self, client)
            client.close()

    def _stages_params(self, chain: Anvil, server: RedisServer, emitter: FleetChain) -> dict:
        return {
            "redis_url": server.url,
            "rpc_url": chain.url,
            "contract": emitter.address.lower(),
            "chain_id": chain.chain_id,
            "start_block": emitter.deploy_block,
        }

    def _start(self, name: str, what: str, params: dict[str, Any], netns: str | None = None):
        self.children[name] = Background(what, params, netns=netns)

    def _wg_hosts(self, lab: Lab | None) -> list[tuple[str, str]]:
        """A lab host with a running wireguard-go per wg token: (namespace, interface)."""
        hosts = []
        for i in range(len(self.wg_tokens)):
            assert lab is not None
            host = lab.add_host(f"b6h{i}")
            host.start_wireguard()
            hosts.append((host.ns, host.ifname))
        return hosts

    def _start_agents(self, server: RedisServer, hosts: list[tuple[str, str]]) -> None:
        budget = self.params["memory_budget_gib"] * 2**30
        budget = min(budget, 0.6 * fs.mem_available())
        procs = max(1, min(self.params["agent_processes"], len(self.agent_tokens)))
        self.cap = int(budget / procs)
        self.extra["rss_cap_per_process_mib"] = self.cap / 2**20
        policy: dict[str, Any] = {"pool": POOL}
        if self.kind == "hub":
            policy.update(topology="hub", hubs=[node_of(h) for h in range(1, self.hubs + 1)])
        base = {
            "dir": str(self.workdir),
            "chain_id": self.keys.chain_id,
            "contract": self.keys.contract,
            "policy": policy,
            "rss_cap": self.cap,
            "reconcile_interval": 3600,
        }
        mode = "file" if self.params["mode"] == "file-only" else "memory"
        specs = [self._spec(t, f"wgb6{i}") for i, t in enumerate(self.agent_tokens)]
        for p in range(procs):
            name = f"agents{p}"
            params = {**base, "name": name, "mode": mode, "redis_url": server.url}
            self._start(name, "fleet", {**params, "agents": specs[p::procs]})
        for i, (token, (ns, ifname)) in enumerate(zip(self.wg_tokens, hosts, strict=True)):
            name = f"wg{i}"
            params = {**base, "name": name, "mode": "wireguard", "redis_url": server.unix_url}
            params["rss_cap"] = WG_HOST_RSS_CAP
            self._start(name, "fleet", {**params, "agents": [self._spec(token, ifname)]}, ns)

    def _spec(self, token: int, ifname: str) -> dict[str, str]:
        node = node_of(token)
        return {
            "node": node,
            "interface": ifname,
            "key_file": str(self.workdir / f"{node}.key"),
            "config_dir": str(self.workdir / "conf" / node),
        }

    @property
    def agent_children(self) -> list[str]:
        return [n for n in self.children if n != "stages"]

    # --- waiting, with every way of failing ---------------------------------------------

    def _check(self) -> None:
        """Raise NotConverged when an agent process died or the machine runs out of memory."""
        progress = fs.read_progress(self.workdir, self.agent_children)
        for name in self.agent_children:
            oom = progress.get(name, {}).get("oom")
            if oom:
                raise NotConverged(oom)
            background = self.children[name]
            rss = fs.rss_bytes(background.proc.pid)
            if rss > self.cap * KILL_FACTOR and not name.startswith("wg"):
                background.kill()
                raise NotConverged(
                    f"out of memory: process {name} reached {rss / 2**20:,.0f} MiB RSS "
                    f"(cap {self.cap / 2**20:,.0f} MiB); killed"
                )
            if not background.alive():
                raise NotConverged(f"agent process {name} exited ({background.proc.returncode})")
            dead = progress.get(name, {}).get("dead", 0)
            if dead:
                raise NotConverged(f"{dead} agent thread(s) of {name} died")
        if not self.children["stages"].alive():
            raise NotConverged("the pipeline process exited")
        if fs.mem_available() < MIN_AVAILABLE:
            raise NotConverged("out of memory: the machine has less than 1 GiB available")

    def _wait(self, done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise NotConverged(f"did not converge: {what} in {timeout:g} s")
            if self.agent_children:
                self._check()
            time.sleep(POLL)

    def _wait_applied(self, target: str, timeout: float, what: str) -> None:
        names = self.agent_children

        def done() -> bool:
            return fs.reached(fs.read_progress(self.workdir, names), names, target)

        try:
            self._wait(done, timeout, f"{what}: not every agent applied {target}")
        except NotConverged as exc:
            progress = fs.read_progress(self.workdir, names)
            behind = [n for n in names if not fs.reached(progress, [n], target)]
            errors = {e for n in names for e in progress.get(n, {}).get("errors", [])}
            notes = [f"behind: {', '.join(behind)}"] if behind else []
            notes += [f"agent errors: {'; '.join(sorted(errors))}"] if errors else []
            raise NotConverged(f"{exc} ({'; '.join(notes)})" if notes else str(exc)) from None

    def _mark(self, k: int) -> None:
        (self.workdir / f"mark-{k}").touch()
        names = self.agent_children
        self._wait(
            lambda: all(
                p.get("marks", 0) > k for p in fs.read_progress(self.workdir, names).values()
            ),
            60,
            f"mark {k} acknowledged",
        )

    # --- the series --------------------------------------------------------------------

    def _series(
        self, emitter: FleetChain, client: redis.Redis, cursor: str, rng: random.Random
    ) -> None:
        """The changes; each noted in ``samples``: (submitted at, its peers entry's time in
        Redis, the entry id), and its kind in ``kinds``."""
        for k in range(self.params["changes"]):
            if self.kind == "hub" and k % 2 == 0:
                token, kind = rng.randint(1, self.hubs), "hub"
            else:
                token, kind = rng.randint(self.first_other, self.members), "other"
            key = random_key(rng)
            time.sleep(GAP)
            submitted = time.time()
            emitter.rotate(token, key)
            entry_id = self._entry(client, cursor, node_of(token), key)
            cursor = entry_id
            self.samples.append((submitted, id_key(entry_id)[0] / 1000, entry_id))
            self.kinds.append(kind)
            self._wait_applied(entry_id, self.params["change_timeout_s"], f"change {k + 1}")

    def _entry(self, client: redis.Redis, cursor: str, node: str, key: str) -> str:
        """The id of the PeerUpsert that gives ``node`` ``key`` (read after ``cursor``)."""
        deadline = time.monotonic() + self.params["change_timeout_s"]
        while time.monotonic() < deadline:
            reply: Any = client.xread({self.keys.peers: cursor}, count=100, block=200)
            for _, entries in reply or []:
                for raw_id, fields in entries:
                    cursor = as_str(raw_id)
                    entry = from_fields(fields)
                    if isinstance(entry, PeerUpsert) and (entry.node_id, entry.public_key) == (
                        node,
                        key,
                    ):
                        return cursor
            self._check()
        raise NotConverged(f"did not converge: the pipeline gave {node} no new key in time")

    # --- figures -----------------------------------------------------------------------

    def _cpu(self) -> dict[str, float]:
        """CPU seconds of every child so far, and of the whole machine (busy, total)."""
        cpu = {n: fs.cpu_seconds(b.proc.pid) for n, b in self.children.items()}
        cpu["machine_busy"], cpu["machine_total"] = fs.machine_cpu()
        return cpu

    def _agent_rss(self) -> int:
        """RSS of the processes of the in-memory (or file-only) agents, together."""
        names = [n for n in self.agent_children if n.startswith("agents")]
        return sum(fs.rss_bytes(self.children[n].proc.pid) for n in names)

    def _failed(self, row_id: str, why: str) -> Result:
        elapsed = time.monotonic() - self.started
        return Result(
            id=row_id,
            name=self._name(),
            value=elapsed,
            unit="s until it stopped (see status)",
            baseline="did not converge: no baseline",
            baseline_value=0.0,
            better="lower",
            ratio_meaning="faster",
            params=self.params,
            extra={
                "status": why,
                "changes_done": len(self.samples),
                **self._rounded(self.extra),
            },
            target=self._target(),
            met=False if self._target() else None,
        )

    def _name(self) -> str:
        p = self.params
        net = (
            f"{p['members']:,}-member mesh"
            if self.kind == "mesh"
            else f"{p['members']:,}-member hub network ({p['hubs']} hubs; agents are spokes)"
        )
        return f"B6 chain -> all {p['agents']:,} agents + {self.n_wg} wireguard-go hosts, {net}"

    def _target(self) -> str:
        return f"p99 <= {TARGET_HUB_P99_MS:g} ms" if self.kind == "hub" else ""

    @staticmethod
    def _rounded(extra: dict[str, Any]) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in extra.items()}

    def _result(self, row_id: str) -> Result:
        extra, latency, floor = figures(self)
        target = self._target()
        return Result(
            id=row_id,
            name=self._name(),
            value=latency[99],
            unit="ms (p99)",
            baseline="the pipeline alone: submission -> peers entry in Redis, p99",
            baseline_value=floor[99],
            better="lower",
            ratio_meaning="faster",
            params=self.params,
            extra={**self._rounded(self.extra), **extra},
            target=target,
            met=latency[99] <= TARGET_HUB_P99_MS if target else None,
        )
