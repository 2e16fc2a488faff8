"""B3 propagation: from a mint's submission to the new peer on every agent.

A real anvil (one block per transaction, confirmations 0) and a fresh
``redis-server``; listener, registry and ipam run in one child process (the
``wgchain run`` stage threads, ``shared.runner.run_stages``). Agents run in other
processes: file-only agents (no interface, they write their config file), spread
over a few processes, and optionally agents on real ``wireguard-go`` interfaces in
network-namespace lab hosts. Every agent's own node is minted first (with its
key, to its own owner), so each is a live member that peers with the others.

Then mints, one at a time: each mint waits for its receipt, then for every agent
to report the new peer, before the next one starts. An agent's process notes the
moment the agent declared the mint's ``PeerUpsert`` applied (its ``applied_position``
reached that entry: ``watch.py``); the latency of a mint is that moment minus the
time the mint was submitted, on the slowest agent. (Timing from
the receipt would under-count, even below zero: web3 learns of the receipt by polling
every 0.1 s, often after the pipeline has already delivered the peer. Submission
time includes mining, instant on anvil, so the figure is an upper bound.)

Where the time goes: the stream ids (the millisecond at which Redis appended each
entry) give the hops submission -> ``events`` -> ``registry`` -> ``peers``; the rest
is the agents' (``agent_apply_p50_ms``: from the entry's append to the agent's apply).

Baseline, on the same chain afterwards: the predecessor's loop, which re-reads
every token with a web3 ``getNodeAccess`` view call and rewrites the whole config
file, running back to back (no sleep) in one process: a generous baseline, as the
predecessor ran one such loop per host.
"""

from __future__ import annotations

import base64
import contextlib
import os
import random
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
from common import Background, Result, percentiles
from fleet_stats import first_applied

from shared.contract.client import AccessNFT
from shared.devnet.anvil import ACCOUNTS, Anvil
from shared.devnet.netns import Lab, available
from shared.devnet.proc import wait_for
from shared.devnet.redis_server import RedisServer
from shared.keys import Keys
from shared.redis_log import id_key

#: Seconds one mint may take to reach every agent before the benchmark fails.
DEADLINE = 30.0
#: Seconds between polls of the agents' status hashes.
POLL = 0.005
#: Redis key where the baseline scanner writes the highest token id it has read.
SCANNED = "bench:b3:scanned"


def owner(i: int) -> str:
    """A distinct owner address per node (keys belong to owners: one key per owner)."""
    return f"0x{0xA6E7000000 + i:040x}"


def run(
    mints: int,
    agents: int,
    agent_procs: int,
    wg_hosts: int,
    baseline_mints: int,
    poll_interval: float,
) -> list[Result]:
    """Time ``mints`` mints to every agent, then the predecessor's loop on the same chain."""
    from consumers.agent.keys import generate_private_key_file

    params: dict[str, Any] = {
        "mints": mints,
        "agents": agents,
        "agent_processes": agent_procs,
        "wireguard_hosts": wg_hosts,
        "baseline_mints": baseline_mints,
        "confirmations": 0,
        "listener_poll_interval_s": poll_interval,
    }
    if wg_hosts:
        ok, reason = available()
        if not ok:
            params["wireguard_hosts_skipped"] = reason
            wg_hosts = 0
    rng = random.Random(3)
    workdir = Path(tempfile.mkdtemp(prefix="wgchain-b3-"))
    background: list[Background] = []
    lab = Lab(prefix=f"wgcb3{secrets.token_hex(2)}") if wg_hosts else None
    try:
        with Anvil() as chain, RedisServer() as server:
            nft = AccessNFT.deploy(chain.url, ACCOUNTS[0][1])
            keys = Keys(chain.chain_id, nft.address.lower())
            base = {"chain_id": chain.chain_id, "contract": nft.address.lower()}
            client = redis.Redis.from_url(server.url)
            nodes: list[dict[str, Any]] = []
            for i in range(agents + wg_hosts):
                key_file = workdir / f"agent-{i:02d}.key"
                public = generate_private_key_file(key_file)
                nodes.append(
                    {
                        "node": f"agent-{i:02d}",
                        "key_file": str(key_file),
                        "public_key": public,
                        "config_dir": str(workdir / f"agent-{i:02d}"),
                    }
                )
            background.append(
                Background(
                    "stages",
                    {
                        **base,
                        "redis_url": server.url,
                        "rpc_url": chain.url,
                        "poll_interval": poll_interval,
                    },
                )
            )
            file_only = nodes[:agents]
            procs = max(1, min(agent_procs, agents))
            for p in range(procs):
                group = file_only[p::procs]
                background.append(
                    Background("agents", {**base, "redis_url": server.url, "agents": group})
                )
            if lab is not None:
                for i, spec in enumerate(nodes[agents:]):
                    host = lab.add_host(f"b3h{i}")
                    host.start_wireguard()
                    spec["interface"] = host.ifname
                    params_wg = {**base, "redis_url": server.unix_url, "agents": [spec]}
                    params_wg["wireguard"] = True
                    background.append(Background("agents", params_wg, netns=host.ns))
            status_keys = [keys.host_status(n["node"]) for n in nodes]

            def peer_counts() -> list[int]:
                """Each agent's peer count, from its status hash (one round trip)."""
                pipe = client.pipeline(transaction=False)
                for key in status_keys:
                    pipe.hget(key, "peer_count")
                return [int(v or 0) for v in pipe.execute()]

            def wait_all(count: int, what: str) -> None:
                """Until every agent has ``count`` peers (fails after DEADLINE seconds)."""
                deadline = time.monotonic() + DEADLINE
                while min(peer_counts()) < count:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"B3: {what} did not reach every agent in {DEADLINE}s")
                    if not all(b.alive() for b in background):
                        raise RuntimeError("B3: a child process died")
                    time.sleep(POLL)

            for i, spec in enumerate(nodes):
                nft.mint(owner(i), spec["node"], spec["public_key"])
            wait_all(len(nodes) - 1, "the agents' own nodes")

            receipts: dict[str, float] = {}
            for k in range(mints):
                node = f"bench-{k:04d}"
                key = base64.b64encode(rng.randbytes(32)).decode()
                sent = time.time()  # the receipt is known only after web3's receipt poll
                nft.mint(owner(1000 + k), node, key)  # (0.1 s): timing from it under-counts
                receipts[node] = sent
                wait_all(len(nodes) + k, node)
            answers = [b.finish() for b in reversed(background)]
            background.clear()
            entries = _upsert_ids(client, keys)
            seen: dict[str, dict[str, float]] = {}
            applying: dict[str, list[float]] = {}
            for answer in answers:
                for agent_node, report in answer.items():
                    seen[agent_node] = {}
                    applying[agent_node] = []
                    for node in receipts:
                        at = first_applied(report["applied"], entries[node])
                        assert at is not None, f"{agent_node} never applied {node}"
                        seen[agent_node][node] = at
                        applying[agent_node].append(at - id_key(entries[node])[0] / 1000)
            wg_nodes = {n["node"] for n in nodes[agents:]}
            file_lat = _latencies(receipts, seen, exclude=wg_nodes)
            wg_lat = _latencies(receipts, seen, only=wg_nodes) if wg_nodes else []
            per_agent = [
                (seen[a][n] - t) * 1000
                for n, t in receipts.items()
                for a in seen
                if a not in wg_nodes
            ]
            hops = _hops(client, keys, receipts)
            apply_ms = {
                kind: percentiles(
                    [1000 * d for a, ds in applying.items() if (a in wg_nodes) == is_wg for d in ds]
                )
                for kind, is_wg in (("file", False), ("wg", True))
            }

            # baseline: the predecessor's full re-read, on the same chain
            client.delete(SCANNED)
            conf = workdir / "predecessor.conf"
            scanner = Background(
                "scanner",
                {
                    "rpc_url": chain.url,
                    "contract": nft.address,
                    "redis_url": server.url,
                    "out": str(conf),
                },
            )
            background.append(scanner)
            wait_for(lambda: client.get(SCANNED) is not None, timeout=DEADLINE, what="scanner")
            minted_at: dict[str, float] = {}
            first_token = len(nodes) + mints + 1
            for k in range(baseline_mints):
                node = f"base-{k:04d}"
                key = base64.b64encode(rng.randbytes(32)).decode()
                result = nft.mint(owner(5000 + k), node, key)
                minted_at[node] = time.time()
                token = result.token_id or first_token + k

                def scanned_to(t: int = token) -> bool:
                    """True once the scanner's loop has read token ``t``."""
                    return int(client.get(SCANNED) or 0) >= t  # type: ignore[arg-type]

                wait_for(scanned_to, timeout=DEADLINE, interval=POLL, what=f"scanner at {token}")
            scanned: dict[str, float] = scanner.finish()
            background.clear()
            base_lat = [(scanned[n] - t) * 1000 for n, t in minted_at.items()]
            client.close()
    finally:
        for b in background:
            with contextlib.suppress(Exception):
                b.kill()
        if lab is not None:
            lab.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    base_p = percentiles(base_lat)
    tokens = len(nodes) + mints + baseline_mints
    rows = [
        _row(
            "B3.file_agents",
            f"B3 propagation: {agents} file-only agents",
            file_lat,
            base_p,
            params,
            tokens,
        ),
    ]
    rows[0].extra["agent_apply_p50_ms"] = apply_ms["file"][50]
    if wg_lat:
        rows.append(
            _row(
                "B3.wg_hosts",
                f"B3 propagation: {wg_hosts} wireguard-go host(s)",
                wg_lat,
                base_p,
                params,
                tokens,
            )
        )
        rows[1].extra["agent_apply_p50_ms"] = apply_ms["wg"][50]
    per = percentiles(per_agent)
    rows[0].extra.update({"per_agent_p50_ms": per[50], "per_agent_p99_ms": per[99], **hops})
    return rows


def _upsert_ids(client: redis.Redis, keys: Keys) -> dict[str, str]:
    """Node id -> the id of its first ``PeerUpsert`` in ``peers``."""
    from shared.events import PeerUpsert, from_fields
    from shared.redis_log import as_str

    out: dict[str, str] = {}
    page: Any = client.xrange(keys.peers)
    for raw_id, fields in page:
        entry = from_fields(fields)
        if isinstance(entry, PeerUpsert):
            out.setdefault(entry.node_id, as_str(raw_id))
    return out


def _hops(client: redis.Redis, keys: Keys, receipts: dict[str, float]) -> dict[str, float]:
    """p50 of each hop (ms), from the stream ids (the ms at which Redis appended each entry).

    receipt -> ``events`` (listener poll + read + append), -> ``registry``, -> ``peers``.
    """
    from shared.events import LogEntry, NodeAccessGranted, NodeJoined, PeerUpsert, from_fields
    from shared.redis_log import as_str

    def first_ms(stream: str) -> dict[str, float]:
        """Node id -> time (s) of its first grant / join / upsert entry in ``stream``."""
        out: dict[str, float] = {}
        page: Any = client.xrange(stream)
        for raw_id, fields in page:
            entry = from_fields(fields)
            if isinstance(entry, LogEntry) and isinstance(entry.event, NodeAccessGranted):
                node = entry.event.node_id
            elif isinstance(entry, NodeJoined | PeerUpsert):
                node = entry.node_id
            else:
                continue
            out.setdefault(node, int(as_str(raw_id).split("-")[0]) / 1000)
        return out

    events, registry, peers = (first_ms(s) for s in (keys.events, keys.registry, keys.peers))
    steps = {
        "hop_listener_p50_ms": [(events[n] - t) * 1000 for n, t in receipts.items()],
        "hop_registry_p50_ms": [(registry[n] - events[n]) * 1000 for n in receipts],
        "hop_ipam_p50_ms": [(peers[n] - registry[n]) * 1000 for n in receipts],
    }
    return {name: percentiles(samples)[50] for name, samples in steps.items()}


def _latencies(
    receipts: dict[str, float],
    seen: dict[str, dict[str, float]],
    *,
    exclude: set[str] | None = None,
    only: set[str] | None = None,
) -> list[float]:
    """Per mint: milliseconds from its receipt until the slowest of the chosen agents had it."""
    chosen = [a for a in seen if (only is None or a in only) and a not in (exclude or set())]
    return [max(seen[a][node] - t for a in chosen) * 1000 for node, t in receipts.items()]


def _row(
    row_id: str,
    name: str,
    samples: list[float],
    base: dict[int, float],
    params: dict[str, Any],
    tokens: int,
) -> Result:
    p = percentiles(samples)
    return Result(
        id=row_id,
        name=name,
        value=p[99],
        unit="ms (p99)",
        baseline="re-read every token by web3 view calls + rewrite the config",
        baseline_value=base[99],
        better="lower",
        ratio_meaning="faster",
        params=params,
        extra={
            "p50_ms": p[50],
            "p95_ms": p[95],
            "p99_ms": p[99],
            "baseline_p50_ms": base[50],
            "baseline_p99_ms": base[99],
            "tokens_on_chain": tokens,
        },
    )


# --- child processes -----------------------------------------------------------------


def stages_child(params: dict[str, Any]) -> dict[str, Any]:
    """Listener + registry + ipam as ``wgchain run`` runs them, until SIGTERM."""
    from shared.cmdline import stop_event
    from shared.runner import run_stages
    from shared.settings import load

    cfg = load(
        {
            "redis_url": params["redis_url"],
            "rpc_url": params["rpc_url"],
            "contract": params["contract"],
            "chain_id": params["chain_id"],
            "confirmations": 0,
            "poll_interval": params["poll_interval"],
        },
        environ={},
    )
    run_stages(cfg, stop_event())
    return {}


def agents_child(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Agents as threads (file-only, or on real interfaces), until SIGTERM.

    Returns, per agent node, every applied position with the wall-clock time the agent
    declared it (``applied``, see ``watch.py``): the parent finds when each agent had
    applied each mint's ``PeerUpsert``.
    """
    import watch

    from consumers.agent.agent import AgentConfig
    from consumers.agent.wg import Wg
    from shared.cmdline import stop_event

    stop = stop_event()
    keys = Keys(params["chain_id"], params["contract"])
    wireguard = bool(params.get("wireguard"))
    watched = watch.agent_class()
    timed: list[Any] = []
    threads = []
    for spec in params["agents"]:
        config = AgentConfig(
            node_id=spec["node"],
            interface=spec.get("interface", "wgb3"),
            private_key_file=Path(spec["key_file"]),
            keys=keys,
            config_dir=Path(spec["config_dir"]),
            file_only=not wireguard,
            reconcile_interval=3600,
        )
        agent = watched(
            config, redis.Redis.from_url(params["redis_url"]), Wg() if wireguard else None
        )
        timed.append(agent)
        threads.append(threading.Thread(target=agent.run, args=(stop,), daemon=True))
    for t in threads:
        t.start()
    watch.Sampler(timed, stop).start()
    stop.wait()
    for t in threads:
        t.join(timeout=30)
    return {
        spec["node"]: {"applied": agent.bench_log.marks}
        for spec, agent in zip(params["agents"], timed, strict=True)
    }


def scanner_child(params: dict[str, Any]) -> dict[str, float]:
    """The predecessor: read every token with web3 view calls, rewrite the config, repeat."""
    from web3 import Web3
    from web3.exceptions import ContractLogicError

    from shared.cmdline import stop_event
    from shared.contract.client import load_artifact

    stop = stop_event()
    w3 = Web3(Web3.HTTPProvider(params["rpc_url"]))
    contract = w3.eth.contract(
        address=Web3.to_checksum_address(params["contract"]), abi=load_artifact()["abi"]
    )
    client = redis.Redis.from_url(params["redis_url"])
    out = Path(params["out"])
    seen: dict[str, float] = {}
    while not stop.is_set():
        peers: list[tuple[str, str]] = []
        token = 1
        while True:
            try:
                node_id, key, _created, active = contract.functions.getNodeAccess(token).call()
            except ContractLogicError:
                break
            if active and key:
                peers.append((node_id, key))
            token += 1
        lines = ["[Interface]", "ListenPort = 51820", ""]
        for n, (node_id, key) in enumerate(peers):
            offset = n + 2
            lines += ["[Peer]", f"# {node_id}", f"PublicKey = {key}"]
            lines += [f"AllowedIPs = 10.88.{offset >> 8}.{offset & 0xFF}/32", ""]
        tmp = out.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        os.replace(tmp, out)
        now = time.time()
        for node_id, _ in peers:
            seen.setdefault(node_id, now)
        client.set(SCANNED, token - 1)
    return seen
