"""Redis key names. Pure.

Every key of one network shares one hash tag, ``{<chainId>:<contract>}``, so a
stage's multi-key commit is atomic on a single Redis and lands in one slot on
Redis Cluster; different networks land on different slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self, overload

#: Key prefix of live data; an audit replay uses another prefix (a scratch namespace).
DEFAULT_PREFIX = "wgchain"


class _Fixed:
    """A key every network has once: ``<prefix>:<tag>:<parts...>`` (a row of :class:`Keys`)."""

    __slots__ = ("name",)

    def __init__(self, *parts: str) -> None:
        self.name = ":".join(parts)

    @overload
    def __get__(self, keys: None, owner: type) -> Self: ...
    @overload
    def __get__(self, keys: Keys, owner: type) -> str: ...
    def __get__(self, keys: Keys | None, owner: type) -> Self | str:
        return self if keys is None else f"{keys.prefix}:{keys.tag}:{self.name}"


@dataclass(frozen=True, slots=True)
class Keys:
    """The Redis keys of one network (chain id + contract address)."""

    chain_id: int
    contract: str
    prefix: str = DEFAULT_PREFIX

    @property
    def tag(self) -> str:
        return f"{{{self.chain_id}:{self.contract.lower()}}}"

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, self.tag, *parts))

    # --- the keys a network has once (each line: what it holds) ------------------------------

    #: Stream: one entry per contract log, chain order, digest-chained.
    events = _Fixed("events")
    #: Stream: membership changes, each naming its ``events`` cause.
    registry = _Fixed("registry")
    #: Stream: peer upserts/removals with addresses, each naming its cause.
    peers = _Fixed("peers")
    #: Hash: ``id`` (peers stream id it covers through) and ``data`` (the full peer set).
    snapshot = _Fixed("peers", "snapshot")
    #: Hash: the listener's cursor (block, hash, last digest, last entry id).
    cursor = _Fixed("listener", "cursor")
    #: Hash: what the lease holder last saw (head, final block, problem, when).
    listener_health = _Fixed("listener", "health")
    #: String with a TTL: ``<fence>:<listener id>`` of the listener allowed to append.
    lease = _Fixed("listener", "lease")
    #: Counter: the last fencing number handed out with :attr:`lease` (only grows).
    fence = _Fixed("listener", "fence")
    #: Stream: node ids of hosts whose announcement changed (agents read it instead of
    #: polling every announcement; each agent appends only its own node id).
    announcements = _Fixed("announcements")
    #: Hash: the running backfill's plan (id, start, end, size); absent when none runs.
    backfill_plan = _Fixed("backfill", "plan")
    #: Hash: ``<from>-<to>`` -> JSON of a fetched range waiting for the listener.
    backfill_staged = _Fixed("backfill", "staged")
    #: Name of the rq queue of this network's backfill jobs.
    backfill_queue = _Fixed("backfill")

    # --- keys per stage, per host, per range -------------------------------------------------

    def position(self, stage: str) -> str:
        """String: the id of the last input entry ``stage`` committed."""
        return self._key(stage, "position")

    def state(self, stage: str) -> str:
        """Hash: ``stage``'s projection state, one field per entity."""
        return self._key(stage, "state")

    def dead(self, stage: str) -> str:
        """Stream: entries ``stage`` could not decode or apply, with the reason."""
        return self._key(stage, "dead")

    def retry(self, stage: str) -> str:
        """Stream: dead letters an operator queued for ``stage`` to apply again."""
        return self._key(stage, "retry")

    def output(self, stage: str) -> str:
        """The stream ``stage`` appends to."""
        return {"registry": self.registry, "ipam": self.peers}[stage]

    def input(self, stage: str) -> str:
        """The stream ``stage`` reads."""
        return {"registry": self.events, "ipam": self.registry}[stage]

    def host_announce(self, node_id: str) -> str:
        """String: JSON announcement (endpoint) written by ``node_id``'s agent, and only by it."""
        return self._key("host", node_id, "announce")

    def host_status(self, node_id: str) -> str:
        """Hash: one agent's applied position, lag, last apply and last error."""
        return self._key("host", node_id, "status")

    def backfill_claim(self, span: str) -> str:
        """String with a short TTL: the worker fetching range ``span`` right now."""
        return self._key("backfill", "claim", span)
