"""B4's host side, inside a lab host's network namespace: the real agent on ``wireguard-go``.

``apply_child`` (the 10,000-peer mesh host) and ``apply_hub_child`` (the spoke of the
100,000-member hub network) each run one watched agent (``Agent.run`` in a thread,
``watch.py``), time bare ``wg set`` key rotations on the interface, then changes through
the agent from their ``XADD`` until the agent declares them applied, and check that the
interface holds what the agent said it applied. See ``b4_apply.py`` for the rows.
"""

from __future__ import annotations

import contextlib
import random
import re
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from b4_apply import (
    CHAIN_ID,
    CONTRACT,
    CONTRACT_HUB,
    OWN_NODE,
    POOL,
    POOL_HUB,
    address,
    hub_name,
    member_name,
    random_key,
)
from common import proc_status, timer

from shared.events import PeerUpsert, to_fields
from shared.keys import Keys

#: Seconds the agent may take to bootstrap, and to apply one change, before the row fails.
BOOT_TIMEOUT = 900.0
CHANGE_TIMEOUT = 60.0
#: Seconds between two timed changes (the agent is idle when the next one comes).
GAP = 0.02
#: PersistentKeepalive the agent gives every peer (the Policy default).
KEEPALIVE = 25


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
    # then every peer onto a fresh interface, by syncconf and by wg set
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
    # onto a fresh interface, as the agent's bootstrap finds it: a new wireguard-go, its
    # key set, link down, no peers (its own ListenPort: the other interface holds this one);
    # alternating with bootstraps of fresh agents onto fresh interfaces (b4_apply.py)
    _write_private(full, re.sub(r"^ListenPort = .*\n", "", text, flags=re.M))
    bootstrap_samples = [run_.bootstrap_s]
    syncconf_empty_samples = []
    for n in range(max(1, params["boots"])):
        if n:
            bootstrap_samples.append(_boot_sample(params, n))
        with _fresh_interface(params["key_file"]) as fresh:
            with timer() as t_bulk:
                _wg("syncconf", fresh, str(full))
            assert len(_dump_peers(fresh)) == params["peers"]
        syncconf_empty_samples.append(t_bulk[0])
    peers = sorted(_dump_peers(ifname).items())
    with _fresh_interface(params["key_file"]) as fresh, timer() as t_set:
        for i in range(0, len(peers), 500):
            argv = ["set", fresh]
            for key, ips in peers[i : i + 500]:
                argv += ["peer", key, "allowed-ips", ips.replace(" ", ",")]
                argv += ["persistent-keepalive", str(KEEPALIVE)]
            _wg(*argv)
    full.unlink()
    return {
        "bootstrap_samples_s": bootstrap_samples,
        "syncconf_empty_samples_s": syncconf_empty_samples,
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


def _boot_sample(params: dict[str, Any], n: int) -> float:
    """Seconds a fresh agent (a process of its own, :func:`boot_child`) takes to fill a
    fresh interface with the mesh."""
    from common import child

    answer: dict[str, Any] = child(
        "boot",
        {
            "redis_url": params["redis_url"],
            "key_file": params["key_file"],
            "last_id": params["last_id"],
            "peers": params["peers"],
            "workdir": str(Path(params["workdir"]) / f"boot{n}"),
        },
        timeout=BOOT_TIMEOUT,
    )
    return float(answer["bootstrap_s"])


def boot_child(params: dict[str, Any]) -> dict[str, Any]:
    """One more ``B4.bootstrap`` sample: a fresh agent started on a fresh wireguard-go
    interface (no key, no peers, link down: as the lab host's own) until it has applied
    the mesh; in the mesh host's namespace (a child of :func:`apply_child`)."""
    from consumers.agent.desired import Policy

    with _fresh_interface(None) as fresh:
        run_ = Running(
            {**params, "contract": CONTRACT, "interface": fresh, "agent_changes": 0},
            Policy(pool=POOL),
        )
        try:
            run_.start(params["last_id"])
            on_interface = len(_dump_peers(fresh))
        finally:
            run_.stop()
    assert on_interface == params["peers"], (on_interface, params["peers"])
    return {"bootstrap_s": run_.bootstrap_s}


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


@contextlib.contextmanager
def _fresh_interface(key_file: str | None) -> Iterator[str]:
    """A new wireguard-go interface in this namespace with the host's key (None: none),
    deleted after."""
    name = f"wgb4f{secrets.token_hex(2)}"
    subprocess.run(["wireguard-go", name], capture_output=True, timeout=60, check=True)
    try:
        if key_file is not None:
            _wg("set", name, "private-key", key_file)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=60, check=False)


def _write_private(path: Path, text: str) -> None:
    """Write a wg configuration (it holds the throwaway interface key) readable by root only."""
    path.touch(mode=0o600)
    path.write_text(text)
