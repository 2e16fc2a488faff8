"""B4 apply: one change on a real wireguard-go host, by hand and through the agent.

A fresh ``redis-server`` holds two networks' ``peers`` streams: a mesh of 10,000
members plus the host's own node, and a hub network of 100,000 members (10 hubs)
in which the host is a spoke. Each runs on its own network-namespace lab host with
a real ``wireguard-go`` and a real :class:`Agent` with the real ``Wg``
(``child.py apply`` and ``child.py apply_hub``, one process each, so each has its
own RSS). The agent runs as in production (``Agent.run`` in a thread); it is timed
from outside through ``applied_position`` (see ``watch.py``), so these rows time
whatever the agent does, from the entry's ``XADD`` until the agent declares it
applied: reading the stream, folding, deciding, ``wg set``, the file, the status.

Rows (ids are stable; see the README's Performance section):

- ``B4.wg_set``: the bare ``wg set`` of one key rotation at 10,000 peers (one
  command: ``peer OLD remove peer NEW allowed-ips ...``), the least any tool can
  do for that change; baseline ``wg syncconf`` of all 10,000 peers with it.
- ``B4.agent_change``: the same kind of change (a ``PeerUpsert`` with a new key)
  through the agent's whole path; p50 and p99 against ``B4.wg_set``.
- ``B4.syncconf_empty``: ``wg syncconf`` of all 10,000 peers onto an emptied
  interface, against ``wg set`` of the same peers 500 per command.
- ``B4.bootstrap``: the agent started on an empty interface until it has applied
  the 10,000 peers, against ``B4.syncconf_empty``.
- ``B4.agent_change_hub``: on the spoke of the 100,000-member hub network, a hub's
  key rotation (the change a spoke must apply) through the agent, p50; baseline the
  bare ``wg set`` of it on the spoke's interface. The p50 of a change to another
  spoke (nothing to apply on this host) is an extra figure.
- ``B4.agent_rss`` / ``B4.agent_rss_hub``: the agent process's RSS after its
  changes, against the same process before the agent was created.
"""

from __future__ import annotations

import base64
import random
import re
import secrets
import subprocess
import threading
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
CONTRACT_HUB = "0x00000000000000000000000000000000000b4a9b"
POOL = "10.96.0.0/16"
#: The hub network's pool: room for 100,000 members and more.
POOL_HUB = "10.96.0.0/12"
OWN_NODE = "bench-self"
#: Seconds the agent may take to bootstrap, and to apply one change, before the row fails.
BOOT_TIMEOUT = 900.0
CHANGE_TIMEOUT = 60.0
#: Seconds between two timed changes (the agent is idle when the next one comes).
GAP = 0.02
#: Entries per pipelined XADD round trip when filling a stream.
FILL_CHUNK = 5000
#: PersistentKeepalive the agent gives every peer (the Policy default).
KEEPALIVE = 25
#: Targets of issue 10 for these rows.
TARGET_CHANGE_RATIO = 2.0
TARGET_CHANGE_P99_MS = 10.0
TARGET_HUB_P50_MS = 5.0
TARGET_RSS_RATIO = 1.3


def address(i: int) -> str:
    """IPv4 address of the i-th member (offset 2.. in the pool; 1 is the host itself)."""
    offset = i + 2
    return f"10.{96 + (offset >> 16)}.{(offset >> 8) & 0xFF}.{offset & 0xFF}"


def hub_name(h: int) -> str:
    return f"hub-{h:02d}"


def member_name(i: int) -> str:
    return f"peer-{i:06d}"


def random_key(rng: random.Random) -> str:
    """A random WireGuard public key (32 random bytes, base64)."""
    return base64.b64encode(rng.randbytes(32)).decode()


def _fill(client: redis.Redis, stream: str, upserts: list[PeerUpsert]) -> str:
    """Append the upserts in pipelined chunks; the id of the last entry."""
    last = ""
    for i in range(0, len(upserts), FILL_CHUNK):
        pipe = client.pipeline(transaction=False)
        for upsert in upserts[i : i + FILL_CHUNK]:
            pipe.xadd(stream, to_fields(upsert))  # type: ignore[arg-type]
        last = pipe.execute()[-1].decode()
    return last


def run(
    peers: int,
    changes: int,
    agent_changes: int,
    syncs: int,
    hub_members: int,
    hubs: int,
    hub_changes: int,
) -> list[Result]:
    """Both hosts, both networks; the rows of the module docstring."""
    from consumers.agent.keys import generate_private_key_file

    ok, reason = available()
    if not ok:
        raise Unavailable(reason)
    params = {"peers": peers, "changes": changes, "agent_changes": agent_changes, "syncs": syncs}
    hub_params = {"members": hub_members, "hubs": hubs, "hub_changes": hub_changes}
    rng = random.Random(4)
    with RedisServer() as server, Lab(prefix=f"wgcb4{secrets.token_hex(2)}") as lab:
        key_file = lab.workdir / "own.key"
        own_key = generate_private_key_file(key_file)
        client = redis.Redis.from_url(server.url)
        mesh = [PeerUpsert(OWN_NODE, own_key, "10.96.0.1", "0-1", "0-1", 1)]
        mesh += [
            PeerUpsert(member_name(i), random_key(rng), address(i), "0-1", "0-1", 1)
            for i in range(peers)
        ]
        last_mesh = _fill(client, Keys(CHAIN_ID, CONTRACT).peers, mesh)
        del mesh
        hub_net = [PeerUpsert(OWN_NODE, own_key, "10.96.0.1", "0-1", "0-1", 1)]
        hub_net += [
            PeerUpsert(
                hub_name(i) if i < hubs else member_name(i),
                random_key(rng),
                address(i),
                "0-1",
                "0-1",
                1,
            )
            for i in range(hub_members - 1)  # the host itself is the last member
        ]
        last_hub = _fill(client, Keys(CHAIN_ID, CONTRACT_HUB).peers, hub_net)
        del hub_net
        client.close()
        common = {
            "redis_url": server.unix_url,
            "key_file": str(key_file),
            "agent_changes": agent_changes,
        }
        host = lab.add_host("b4")
        host.start_wireguard()
        out: dict[str, Any] = child(
            "apply",
            {
                **common,
                **params,
                "last_id": last_mesh,
                "interface": host.ifname,
                "workdir": str(lab.workdir / "mesh"),
            },
            netns=host.ns,
            timeout=3600,
        )
        spoke = lab.add_host("b4s")
        spoke.start_wireguard()
        hub_out: dict[str, Any] = child(
            "apply_hub",
            {
                **common,
                "members": hub_members,
                "hubs": hubs,
                "agent_changes": hub_changes,
                "last_id": last_hub,
                "interface": spoke.ifname,
                "workdir": str(lab.workdir / "hub"),
            },
            netns=spoke.ns,
            timeout=3600,
        )
    return _rows(out, hub_out, params, hub_params)


def _rows(
    out: dict[str, Any], hub: dict[str, Any], params: dict[str, Any], hub_params: dict[str, Any]
) -> list[Result]:
    peers = params["peers"]
    wg_set = percentiles(out["wg_set_ms"])
    agent = percentiles(out["agent_ms"])
    sync = percentiles(out["syncconf_ms"])
    hub_set = percentiles(hub["wg_set_ms"])
    hub_change = percentiles(hub["hub_change_ms"])
    other = percentiles(hub["other_change_ms"])
    change_met = agent[50] <= TARGET_CHANGE_RATIO * wg_set[50] and agent[99] <= TARGET_CHANGE_P99_MS
    return [
        Result(
            id="B4.wg_set",
            name=f"B4 one key rotation at {peers:,} peers, bare wg set",
            value=wg_set[50],
            unit="ms (p50)",
            baseline=f"wg syncconf of all {peers:,} peers",
            baseline_value=sync[50],
            better="lower",
            ratio_meaning="faster",
            params=params,
            extra={"p99_ms": wg_set[99], "peers_on_interface": out["peers_on_interface"]},
        ),
        Result(
            id="B4.agent_change",
            name=f"B4 one change at {peers:,} peers through the agent (XADD -> applied)",
            value=agent[50],
            unit="ms (p50)",
            baseline="B4.wg_set (the bare wg set of that change)",
            baseline_value=wg_set[50],
            better="lower",
            ratio_meaning="faster",
            params=params,
            extra={
                "p50_ms": agent[50],
                "p99_ms": agent[99],
                "wg_commands_per_change": out["wg_commands_per_change"],
                "wg_ms_per_change": out["wg_ms_per_change"],
                "detected": out["detected"],
            },
            target=f"p50 <= {TARGET_CHANGE_RATIO:g}x B4.wg_set and p99 <= "
            f"{TARGET_CHANGE_P99_MS:g} ms",
            met=change_met,
        ),
        Result(
            id="B4.syncconf_empty",
            name=f"B4 wg syncconf of {peers:,} peers onto an empty interface",
            value=out["syncconf_empty_s"],
            unit="s",
            baseline="wg set of the same peers, 500 per command",
            baseline_value=out["bulk_set_s"],
            better="lower",
            ratio_meaning="faster",
            params=params,
        ),
        Result(
            id="B4.bootstrap",
            name=f"B4 agent start onto an empty interface, {peers:,} peers",
            value=out["bootstrap_s"],
            unit="s",
            baseline="B4.syncconf_empty",
            baseline_value=out["syncconf_empty_s"],
            better="lower",
            ratio_meaning="faster",
            params=params,
            target="<= 1.0x B4.syncconf_empty",
            met=out["bootstrap_s"] <= out["syncconf_empty_s"],
        ),
        Result(
            id="B4.agent_change_hub",
            name=f"B4 hub key rotation on a spoke of a {hub_params['members']:,}-member "
            "hub network, through the agent",
            value=hub_change[50],
            unit="ms (p50)",
            baseline="bare wg set of that change on the spoke",
            baseline_value=hub_set[50],
            better="lower",
            ratio_meaning="faster",
            params=hub_params,
            extra={
                "p99_ms": hub_change[99],
                "other_spoke_change_p50_ms": other[50],
                "other_spoke_change_p99_ms": other[99],
                "bootstrap_s": hub["bootstrap_s"],
                "peers_on_interface": hub["peers_on_interface"],
                "detected": hub["detected"],
            },
            target=f"p50 <= {TARGET_HUB_P50_MS:g} ms",
            met=hub_change[50] <= TARGET_HUB_P50_MS,
        ),
        _rss_row("B4.agent_rss", f"B4 agent RSS, {peers:,} peers", out, params, target=True),
        _rss_row(
            "B4.agent_rss_hub",
            f"B4 agent RSS, spoke of a {hub_params['members']:,}-member hub network",
            hub,
            hub_params,
        ),
    ]


def _rss_row(
    row_id: str, name: str, out: dict[str, Any], params: dict[str, Any], *, target: bool = False
) -> Result:
    loaded, empty = mib(out["rss_loaded"]), mib(out["rss_empty"])
    return Result(
        id=row_id,
        name=name,
        value=loaded,
        unit="MiB",
        baseline="the same process before the agent was created",
        baseline_value=empty,
        better="reference",
        ratio_meaning="the empty process",
        params=params,
        extra={"peak_rss_mib": mib(out["peak_rss"])},
        target=f"<= {TARGET_RSS_RATIO:g}x the empty process" if target else "",
        met=loaded <= TARGET_RSS_RATIO * empty if target else None,
    )


# --- inside the namespaces -------------------------------------------------------------


class WgCounter:
    """Counts the ``wg``/``ip`` commands the agent runs (and their time), when it runs
    them through ``consumers.agent.wg.run``."""

    def __init__(self) -> None:
        import consumers.agent.wg as wg_module

        self.commands = 0
        self.seconds = 0.0
        self.module = wg_module
        self.original = getattr(wg_module, "run", None)
        if self.original is not None:
            wg_module.run = self._run  # type: ignore[assignment]

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.original(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.commands += 1
            self.seconds += time.perf_counter() - start


def _wg(*argv: str, stdin: str | None = None) -> str:
    """Run ``wg`` (no shell); its stdout."""
    proc = subprocess.run(
        ["wg", *argv], input=stdin, capture_output=True, text=True, timeout=300, check=True
    )
    return proc.stdout


def _dump_peers(ifname: str) -> dict[str, str]:
    """Public key -> allowed IPs of the interface's peers (``wg show IF allowed-ips``)."""
    peers = {}
    for line in _wg("show", ifname, "allowed-ips").splitlines():
        key, _, ips = line.partition("\t")
        peers[key] = ips.strip()
    return peers


def _rotate_by_hand(ifname: str, old: str, new: str, ips: str) -> float:
    """One ``wg set`` that replaces peer ``old`` by ``new`` (same IPs); its milliseconds."""
    argv = ["set", ifname, "peer", old, "remove", "peer", new, "allowed-ips", ips]
    argv += ["persistent-keepalive", str(KEEPALIVE)]
    start = time.perf_counter()
    _wg(*argv)
    return (time.perf_counter() - start) * 1000


def _hand_rotations(ifname: str, count: int, rng: random.Random) -> list[float]:
    """``count`` bare key rotations of random peers, each undone (untimed) at once."""
    peers = sorted(_dump_peers(ifname).items())
    timings = []
    for _ in range(count):
        old, ips = rng.choice(peers)
        new = random_key(rng)
        timings.append(_rotate_by_hand(ifname, old, new, ips.replace(" ", ",")))
        _rotate_by_hand(ifname, new, old, ips.replace(" ", ","))
    return timings


class Running:
    """One watched agent running in a thread (``Agent.run``), stopped by :meth:`stop`."""

    def __init__(self, params: dict[str, Any], policy: Any) -> None:
        import watch

        from consumers.agent.agent import AgentConfig
        from consumers.agent.wg import Wg

        workdir = Path(params["workdir"])
        workdir.mkdir(parents=True, exist_ok=True)
        self.keys = Keys(CHAIN_ID, params["contract"])
        config = AgentConfig(
            node_id=OWN_NODE,
            interface=params["interface"],
            private_key_file=Path(params["key_file"]),
            keys=self.keys,
            policy=policy,
            config_dir=workdir / "conf",
            reconcile_interval=3600,
        )
        self.rss_empty = proc_status()["VmRSS"]
        self.wg = WgCounter()
        self.agent = watch.agent_class()(config, redis.Redis.from_url(params["redis_url"]), Wg())
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.halt,), daemon=True)
        self.writer = redis.Redis.from_url(params["redis_url"])
        self.bootstrap_s = 0.0

    def start(self, last_id: str) -> None:
        """Start the agent; returns once it has applied ``last_id`` (the bootstrap time)."""
        import watch

        started = time.time()
        self.thread.start()
        at = watch.wait_applied(self.agent, last_id, BOOT_TIMEOUT, self.thread.is_alive)
        self.bootstrap_s = at - started

    def change(self, upsert: PeerUpsert) -> float:
        """Append ``upsert``; milliseconds until the agent has applied it."""
        import watch

        time.sleep(GAP)
        start = time.time()
        entry_id = self.writer.xadd(self.keys.peers, to_fields(upsert)).decode()  # type: ignore[arg-type,union-attr]
        at = watch.wait_applied(self.agent, entry_id, CHANGE_TIMEOUT, self.thread.is_alive)
        return (at - start) * 1000

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(timeout=60)

    def detected(self) -> str:
        """How applications were noted: by the hook (exact), or some only by the sampler."""
        log = self.agent.bench_log
        return f"hook ({log.sampled} of {len(log.marks)} marks only sampled)"


def apply_child(params: dict[str, Any]) -> dict[str, Any]:
    """The mesh host: bootstrap, bare wg set, changes through the agent, full syncs."""
    from consumers.agent.desired import Policy

    ifname = params["interface"]
    run_ = Running({**params, "contract": CONTRACT}, Policy(pool=POOL))
    run_.start(params["last_id"])
    on_interface = len(_dump_peers(ifname))
    assert on_interface == params["peers"], (on_interface, params["peers"])
    rng = random.Random(44)
    wg_set_ms = _hand_rotations(ifname, params["changes"], rng)

    agent_ms = []
    expected: dict[str, str] = {}
    commands_before, seconds_before = run_.wg.commands, run_.wg.seconds
    for n in range(params["agent_changes"]):
        i = rng.randrange(params["peers"])
        upsert = PeerUpsert(member_name(i), random_key(rng), address(i), "0-1", "0-1", 2 + n)
        agent_ms.append(run_.change(upsert))
        expected[member_name(i)] = upsert.public_key
    count = max(1, params["agent_changes"])
    wg_commands = (run_.wg.commands - commands_before) / count
    wg_ms = (run_.wg.seconds - seconds_before) * 1000 / count
    now = _dump_peers(ifname)
    missing = [node for node, key in expected.items() if key not in now]
    assert not missing, f"the agent said applied, but {missing} lack their new key"
    rss_loaded = proc_status()["VmRSS"]
    run_.stop()

    # baselines: the full configuration through wg syncconf (one peer changed each time),
    # then every peer onto an emptied interface, by syncconf and by wg set
    workdir = Path(params["workdir"])
    full = workdir / "full.conf"
    text = _wg("showconf", ifname)
    first_ips = re.search(r"^AllowedIPs = (.*)$", text, re.M)
    assert first_ips is not None
    syncconf_ms = []
    for n in range(params["syncs"]):
        changed = text.replace(first_ips.group(0), f"AllowedIPs = 10.98.0.{n + 1}/32", 1)
        _write_private(full, changed)
        with timer() as t_sync:
            _wg("syncconf", ifname, str(full))
        syncconf_ms.append(t_sync[0] * 1000)
    empty = workdir / "empty.conf"
    _write_private(empty, text.split("\n[Peer]", 1)[0] + "\n")
    _write_private(full, text)
    _wg("syncconf", ifname, str(empty))
    assert not _dump_peers(ifname)
    with timer() as t_bulk:
        _wg("syncconf", ifname, str(full))
    assert len(_dump_peers(ifname)) == params["peers"]
    peers = sorted(_dump_peers(ifname).items())
    _wg("syncconf", ifname, str(empty))
    with timer() as t_set:
        for i in range(0, len(peers), 500):
            argv = ["set", ifname]
            for key, ips in peers[i : i + 500]:
                argv += ["peer", key, "allowed-ips", ips.replace(" ", ",")]
                argv += ["persistent-keepalive", str(KEEPALIVE)]
            _wg(*argv)
    assert len(_dump_peers(ifname)) == params["peers"]
    full.unlink()
    empty.unlink()
    return {
        "bootstrap_s": run_.bootstrap_s,
        "syncconf_empty_s": t_bulk[0],
        "bulk_set_s": t_set[0],
        "wg_set_ms": wg_set_ms,
        "agent_ms": agent_ms,
        "syncconf_ms": syncconf_ms,
        "wg_commands_per_change": wg_commands,
        "wg_ms_per_change": wg_ms,
        "peers_on_interface": on_interface,
        "rss_empty": run_.rss_empty,
        "rss_loaded": rss_loaded,
        "peak_rss": proc_status()["VmHWM"],
        "detected": run_.detected(),
    }


def apply_hub_child(params: dict[str, Any]) -> dict[str, Any]:
    """The spoke host: bootstrap, then hub rotations and other spokes' rotations."""
    from consumers.agent.desired import Policy

    ifname = params["interface"]
    hubs = params["hubs"]
    policy = Policy(pool=POOL_HUB, topology="hub", hubs=tuple(hub_name(h) for h in range(hubs)))
    run_ = Running({**params, "contract": CONTRACT_HUB}, policy)
    run_.start(params["last_id"])
    on_interface = len(_dump_peers(ifname))
    assert on_interface == hubs, (on_interface, hubs)
    rng = random.Random(45)
    wg_set_ms = _hand_rotations(ifname, max(10, params["agent_changes"]), rng)
    hub_ms, other_ms = [], []
    expected: dict[str, str] = {}
    for n in range(params["agent_changes"]):
        h = rng.randrange(hubs)
        upsert = PeerUpsert(hub_name(h), random_key(rng), address(h), "0-1", "0-1", 2 + 2 * n)
        hub_ms.append(run_.change(upsert))
        expected[hub_name(h)] = upsert.public_key
        i = rng.randrange(hubs, params["members"] - 1)
        upsert = PeerUpsert(member_name(i), random_key(rng), address(i), "0-1", "0-1", 3 + 2 * n)
        other_ms.append(run_.change(upsert))
    now = _dump_peers(ifname)
    missing = [node for node, key in expected.items() if key not in now]
    assert not missing, f"the agent said applied, but {missing} lack their new key"
    assert len(now) == hubs, len(now)
    rss_loaded = proc_status()["VmRSS"]
    run_.stop()
    return {
        "bootstrap_s": run_.bootstrap_s,
        "wg_set_ms": wg_set_ms,
        "hub_change_ms": hub_ms,
        "other_change_ms": other_ms,
        "peers_on_interface": on_interface,
        "rss_empty": run_.rss_empty,
        "rss_loaded": rss_loaded,
        "peak_rss": proc_status()["VmHWM"],
        "detected": run_.detected(),
    }


def _write_private(path: Path, text: str) -> None:
    """Write a wg configuration (it holds the throwaway interface key) readable by root only."""
    path.touch(mode=0o600)
    path.write_text(text)
