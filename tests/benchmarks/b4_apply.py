"""B4 apply: one change on a real wireguard-go host, by hand and through the agent.

A fresh ``redis-server`` holds two networks' ``peers`` streams: a mesh of 10,000
members plus the host's own node, and a hub network of 100,000 members (10 hubs)
in which the host is a spoke. Each runs on its own network-namespace lab host with
a real ``wireguard-go`` and a real :class:`Agent` with the real ``Wg``
(``child.py apply`` and ``child.py apply_hub``, in ``b4_host.py``; one process each,
so each has its own RSS). The agent runs as in production (``Agent.run`` in a thread); it is timed
from outside through ``applied_position`` (see ``watch.py``), so these rows time
whatever the agent does, from the entry's ``XADD`` until the agent declares it
applied: reading the stream, folding, deciding, ``wg set``, the file, the status.

Rows (ids are stable; see the README's Performance section):

- ``B4.wg_set``: the bare ``wg set`` of one key rotation at 10,000 peers (one
  command: ``peer OLD remove peer NEW allowed-ips ...``), the least any tool can
  do for that change; baseline ``wg syncconf`` of all 10,000 peers with it.
- ``B4.agent_change``: the same kind of change (a ``PeerUpsert`` with a new key)
  through the agent's whole path; p50 and p99 against ``B4.wg_set``.
- ``B4.syncconf_empty``: ``wg syncconf`` of all 10,000 peers onto a fresh interface
  (a new ``wireguard-go`` with the host's key, link down, no peers: what the agent's
  bootstrap finds), against ``wg set`` of the same peers 500 per command (the same).
- ``B4.bootstrap``: the agent started on an empty interface until it has applied
  the 10,000 peers, against ``B4.syncconf_empty``.

  Both are the median of ``boots`` samples taken alternately (bootstrap, syncconf,
  bootstrap, syncconf, ...), each onto its own fresh interface; the first bootstrap
  is the mesh host's own agent, each later one a fresh agent in a process of its own
  (``boot_child``). One sample of either varies by some 15% on a shared machine, as
  much as the difference the target asks about; every sample is an extra figure.
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
import secrets
import statistics
from typing import Any

import redis
from common import Result, Unavailable, child, mib, percentiles

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
#: Entries per pipelined XADD round trip when filling a stream.
FILL_CHUNK = 5000
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
    boots: int,
    hub_members: int,
    hubs: int,
    hub_changes: int,
) -> list[Result]:
    """Both hosts, both networks; the rows of the module docstring."""
    from consumers.agent.keys import generate_private_key_file

    ok, reason = available()
    if not ok:
        raise Unavailable(reason)
    params = {
        "peers": peers,
        "changes": changes,
        "agent_changes": agent_changes,
        "syncs": syncs,
        "boots": boots,
    }
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
    bootstrap = statistics.median(out["bootstrap_samples_s"])
    syncconf_empty = statistics.median(out["syncconf_empty_samples_s"])
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
            name=f"B4 wg syncconf of {peers:,} peers onto a fresh interface",
            value=syncconf_empty,
            unit="s (median)",
            baseline="wg set of the same peers, 500 per command",
            baseline_value=out["bulk_set_s"],
            better="lower",
            ratio_meaning="faster",
            params=params,
            extra={"samples_s": [round(x, 3) for x in out["syncconf_empty_samples_s"]]},
        ),
        Result(
            id="B4.bootstrap",
            name=f"B4 agent start onto a fresh interface, {peers:,} peers",
            value=bootstrap,
            unit="s (median)",
            baseline="B4.syncconf_empty",
            baseline_value=syncconf_empty,
            better="lower",
            ratio_meaning="faster",
            params=params,
            extra={
                "samples_s": [round(x, 3) for x in out["bootstrap_samples_s"]],
                "pair_ratios": [
                    round(b / s, 3)
                    for b, s in zip(
                        out["bootstrap_samples_s"], out["syncconf_empty_samples_s"], strict=True
                    )
                ],
            },
            target="<= 1.0x B4.syncconf_empty (medians)",
            met=bootstrap <= syncconf_empty,
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
