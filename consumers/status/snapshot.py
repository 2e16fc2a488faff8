"""The fleet's state in one Redis round trip: listener, stages, hosts and issues.

A single Lua script reads everything (so the picture is consistent, and one
status costs one round trip whether there are 3 hosts or 1,000): the listener's
cursor, lease and health record, each stage's position, how many input entries it
is behind (capped) and since when, every agent's status hash (found with ``SCAN``
on the host-status key pattern, so agents that announce no endpoint are found
too), how many ``peers`` entries each agent has not applied yet (one backward walk
of the stream for all hosts, capped), the current conflicts, anomalies and pending
allocations (one field of each state hash: ``registry/issues.py``, ``ipam/allocate.py``)
and the dead letters. No stream is read whole, so a status costs the same with 10
entries of history as with 10 million. The chain head comes from the RPC node when
it answers; :func:`consumers.status.health.assess` then names what is wrong.
"""

from __future__ import annotations

import math
import time
from typing import Any, Final

import msgspec
import redis
import requests

from consumers.ipam.allocate import PENDING_ISSUES_FIELD
from consumers.registry.issues import ISSUES_FIELD, listed
from consumers.status.health import Limits, assess
from consumers.status.model import (
    ANOMALY,
    CONFLICT,
    PENDING,
    Counts,
    FleetStatus,
    HostInfo,
    Issue,
    ListenerInfo,
    StageInfo,
)
from shared import lua
from shared.keys import Keys
from shared.redis_log import START, as_str

#: Most entries counted when measuring a lag; a larger lag shows as "at least" this.
LAG_CAP: Final = 1000
#: Keys examined per SCAN step while looking for agent status hashes.
SCAN_COUNT: Final = 1000
#: Seconds to wait for the RPC node's block number before showing "unknown".
RPC_TIMEOUT: Final = 2.0
#: The stages, in pipeline order.
STAGES: Final = ("registry", "ipam")
#: Networks named in the hint of a "no data for this network" problem, and keys examined.
HINT_NETWORKS: Final = 5
HINT_SCAN_KEYS: Final = 100_000

_LUA: Final = lua.source("status_snapshot")


class _Announcement(msgspec.Struct):
    endpoint: str | None = None


_ANNOUNCEMENT: Final = msgspec.json.Decoder(_Announcement)


class Snapshot:
    """Runs the status script for one network."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.keys = keys
        self._script = client.register_script(_LUA)
        lease = getattr(keys, "lease", None)
        self._keys = [
            keys.cursor,
            lease if isinstance(lease, str) else keys.cursor + ":lease",
            keys.events,
            keys.registry,
            keys.peers,
            keys.position("registry"),
            keys.position("ipam"),
            keys.dead("listener"),
            keys.dead("registry"),
            keys.dead("ipam"),
            keys.state("ipam"),
            keys.state("registry"),
            keys.listener_health,
        ]
        self._host_prefix = keys.host_status("\0").partition("\0")[0]
        self._client = client

    def _run(self, mode: str, cap: int, node: str = "") -> list[Any]:
        pattern = _glob_escape(self._host_prefix) + "*"
        args: list[str | int] = [mode, cap, pattern, SCAN_COUNT, "", ISSUES_FIELD]
        if node:
            args[2:5] = [self.keys.host_status(node), SCAN_COUNT, self.keys.host_announce(node)]
        args.append(PENDING_ISSUES_FIELD)
        reply: Any = self._script(keys=self._keys, args=args)
        return list(reply)

    def stages(self, cap: int = LAG_CAP) -> list[StageInfo]:
        """Each stage's position and lag (lags counted up to ``cap``)."""
        positions, lags = self._run("stages", cap)
        return _stages(positions, lags, cap, [0, 0])

    def hosts(self, cap: int = LAG_CAP) -> list[HostInfo]:
        """Every agent that reported or announced itself, by node id."""
        _, _, hosts = self._run("hosts", cap)
        return self._hosts(hosts, cap)

    def host(self, node: str, cap: int = LAG_CAP) -> HostInfo | None:
        """One agent's status (None when it neither reported nor announced itself)."""
        _, _, hosts = self._run("host", cap, node)
        return next((h for h in self._hosts(hosts, cap) if h.node == node), None)

    def issues(self) -> list[Issue]:
        """The current conflicts, anomalies and pending allocations (one round trip)."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hget(self.keys.state("registry"), ISSUES_FIELD)
        pipe.hget(self.keys.state("ipam"), PENDING_ISSUES_FIELD)
        found, pending = pipe.execute()
        return listed(found) + listed(pending)

    def fleet(
        self, rpc_urls: list[str], cap: int = LAG_CAP, limits: Limits | None = None
    ) -> FleetStatus:
        """The whole status and what is wrong; ``rpc_urls`` are asked for the chain head."""
        raw = self._run("full", cap)
        positions, lags, hosts, listener, dead, issues, waiting, now_ms = raw
        now = time.time()
        cursor = _pairs(listener[0])
        block = _int(cursor.get("block"))
        head = chain_head(rpc_urls)
        record = _pairs(listener[4])
        info = ListenerInfo(
            cursor_block=block,
            cursor_hash=cursor.get("hash"),
            last_entry=cursor.get("last_id"),
            chain_head=head,
            lag_blocks=max(0, head - block) if head is not None and block is not None else None,
            events=int(listener[3]),
            dead_letters=int(dead[0]),
            final_block=_int(record.get("final")),
            head_block=_int(record.get("head")),
            polled_at=_float(record.get("at")),
            problem=record.get("problem", ""),
        )
        if listener[1]:
            fence, _, holder = as_str(listener[1]).partition(":")
            info.lease_holder = holder or fence
            info.lease_fence = int(fence) if fence.isdigit() and holder else None
            ttl = int(listener[2])
            info.lease_ttl_seconds = ttl / 1000 if ttl >= 0 else None
        stages = _stages(positions, lags, cap, [int(d) for d in dead[1:]])
        for stage, first in zip(stages, waiting, strict=True):
            if first:
                stage.waiting_seconds = max(0, int(now_ms) - _ms(as_str(first))) / 1000
        current = listed(issues[0]) + listed(issues[1])
        fleet = FleetStatus(
            network=self.keys.tag,
            generated_at=now,
            listener=info,
            stages=stages,
            hosts=self._hosts(hosts, cap, int(now_ms)),
            peers_head=as_str(hosts[5][2]) if hosts[5][2] else None,
            counts=Counts(
                conflicts=sum(i.kind == CONFLICT for i in current),
                anomalies=sum(i.kind == ANOMALY for i in current),
                pending_allocations=sum(i.kind == PENDING for i in current),
                dead_letters=sum(int(d) for d in dead),
            ),
            has_data=bool(cursor) or int(listener[3]) > 0 or bool(listener[1]),
            issues=current,
        )
        assess(fleet, limits or Limits(), now, self._other_networks)
        return fleet

    def _other_networks(self) -> list[str]:
        """Networks Redis holds data for (the hint of a "no data for this network" problem).

        A bounded ``SCAN`` (at most :data:`HINT_SCAN_KEYS` keys examined), run only when
        this network has no data; none on a Redis Cluster (its keys are spread over nodes).
        """
        if not isinstance(self._client, redis.Redis):
            return []
        found: set[str] = set()
        pattern = f"{_glob_escape(self.keys.prefix)}:{{*}}:listener:cursor"
        cursor: Any = 0
        for _ in range(HINT_SCAN_KEYS // SCAN_COUNT):
            cursor, page = self._client.scan(cursor, match=pattern, count=SCAN_COUNT)
            found.update(as_str(k).split(":{", 1)[-1].split("}", 1)[0] for k in page)
            if int(cursor) == 0 or len(found) >= HINT_NETWORKS:
                break
        return sorted(found)[:HINT_NETWORKS]

    def _hosts(self, raw: list[Any], cap: int, now_ms: int | None = None) -> list[HostInfo]:
        statuses, hashes, lags, announces, docs, tails, firsts = raw
        endpoints: dict[str, str | None] = {}
        for key, doc in zip(announces, docs, strict=True):
            try:
                endpoints[self._node(key, ":announce")] = _ANNOUNCEMENT.decode(doc).endpoint
            except msgspec.DecodeError:
                endpoints[self._node(key, ":announce")] = None
        peers_tail = as_str(tails[2]) if tails[2] else START
        hosts: dict[str, HostInfo] = {}
        for key, flat, lag, first in zip(statuses, hashes, lags, firsts, strict=True):
            node = self._node(key, ":status")
            host = _host(node, _pairs(flat), int(lag), cap, peers_tail)
            if first and now_ms is not None:
                host.waiting_seconds = max(0, now_ms - _ms(as_str(first))) / 1000
            host.endpoint = endpoints.get(node)
            hosts[node] = host
        for node, endpoint in endpoints.items():
            if node not in hosts:
                hosts[node] = HostInfo(node=node, endpoint=endpoint)
        return [hosts[n] for n in sorted(hosts)]

    def _node(self, key: bytes | str, suffix: str) -> str:
        """The node id inside a per-host key."""
        return as_str(key)[len(self._host_prefix) : -len(suffix)]


def _host(node: str, fields: dict[str, str], lag: int, cap: int, peers_tail: str) -> HostInfo:
    """One agent's status hash; fields an older agent does not write stay None (unknown)."""
    applied = fields.get("applied_position", START)
    last_apply = _float(fields.get("last_apply"))
    held = fields.get("held")
    holds = None if held is None else _held(held)
    return HostInfo(
        node=node,
        interface=fields.get("interface", ""),
        mode=fields.get("mode", ""),
        applied_position=applied,
        lag_entries=lag,
        lag_capped=lag >= cap,
        lag_seconds=max(0, _ms(peers_tail) - _ms(applied)) / 1000,
        last_apply=last_apply or None,
        last_error=fields.get("last_error", ""),
        peer_count=int(_float(fields.get("peer_count")) or 0),
        fail_closed=fields.get("fail_closed", ""),
        addresses=fields.get("addresses", ""),
        updated_at=_float(fields.get("updated_at")),
        reconcile_interval=_float(fields.get("reconcile_interval")) or None,
        applied_block=_int(fields.get("applied_block")),
        handshake_latest=_float(fields.get("handshake_latest")),
        held=None if held is None else holds is not None,
        held_reason=holds or "",
        public_key=fields.get("public_key", ""),
    )


def _held(value: str) -> str | None:
    """Why a host holds its configuration ("" when it says only that it does), None when it
    does not: the agent writes the reason, or "" (older agents: 1/true or 0/false)."""
    text = value.strip()
    if text.lower() in {"", "0", "false", "no"}:
        return None
    return "" if text.lower() in {"1", "true", "yes"} else text


def _stages(positions: list[Any], lags: list[Any], cap: int, dead: list[int]) -> list[StageInfo]:
    return [
        StageInfo(
            name=name,
            position=as_str(pos),
            lag_entries=int(lag),
            lag_capped=int(lag) >= cap,
            dead_letters=d,
        )
        for name, pos, lag, d in zip(STAGES, positions, lags, dead, strict=True)
    ]


def chain_head(urls: list[str], timeout: float = RPC_TIMEOUT) -> int | None:
    """The latest block number from the first RPC URL that answers, else None."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []}
    for url in urls:
        try:
            resp = requests.post(url, json=body, timeout=timeout)
            return int(msgspec.json.decode(resp.content)["result"], 16)
        except (requests.RequestException, KeyError, TypeError, ValueError, msgspec.DecodeError):
            continue
    return None


def _pairs(flat: list[Any]) -> dict[str, str]:
    """A flat HGETALL reply as a dict of str (undecodable bytes replaced)."""
    values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat]
    return dict(zip(values[::2], values[1::2], strict=True))


def _float(text: str | None) -> float | None:
    """A number from a status hash (None: missing or not a finite number)."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _int(text: str | None) -> int | None:
    """A whole number from a hash (None: missing or not one)."""
    return int(text) if text is not None and text.isdigit() else None


def _ms(entry_id: str) -> int:
    ms = entry_id.partition("-")[0]
    return int(ms) if ms.isdigit() else 0


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
