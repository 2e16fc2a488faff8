"""Redis key names. Pure.

Every key of one network shares one hash tag, ``{<chainId>:<contract>}``, so a
stage's multi-key commit is atomic on a single Redis and lands in one slot on
Redis Cluster; different networks land on different slots.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Key prefix of live data; an audit replay uses another prefix (a scratch namespace).
DEFAULT_PREFIX = "wgchain"


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

    @property
    def events(self) -> str:
        """Stream: one entry per contract log, chain order, digest-chained."""
        return self._key("events")

    @property
    def registry(self) -> str:
        """Stream: membership changes, each naming its ``events`` cause."""
        return self._key("registry")

    @property
    def peers(self) -> str:
        """Stream: peer upserts/removals with addresses, each naming its cause."""
        return self._key("peers")

    @property
    def cursor(self) -> str:
        """Hash: the listener's cursor (block, hash, last digest, last entry id)."""
        return self._key("listener", "cursor")

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

    @property
    def announcements(self) -> str:
        """Stream: node ids of hosts whose announcement changed (agents read it instead of
        polling every announcement; each agent appends only its own node id)."""
        return self._key("announcements")

    def host_status(self, node_id: str) -> str:
        """Hash: one agent's applied position, lag, last apply and last error."""
        return self._key("host", node_id, "status")

    @property
    def listener_health(self) -> str:
        """Hash: what the lease holder last saw (head, final block, problem, when)."""
        return self._key("listener", "health")

    @property
    def lease(self) -> str:
        """String with a TTL: ``<fence>:<listener id>`` of the listener allowed to append."""
        return self._key("listener", "lease")

    @property
    def fence(self) -> str:
        """Counter: the last fencing number handed out with :attr:`lease` (only grows)."""
        return self._key("listener", "fence")

    @property
    def backfill_plan(self) -> str:
        """Hash: the running backfill's plan (id, start, end, size); absent when none runs."""
        return self._key("backfill", "plan")

    @property
    def backfill_staged(self) -> str:
        """Hash: ``<from>-<to>`` -> JSON of a fetched range waiting for the listener."""
        return self._key("backfill", "staged")

    def backfill_claim(self, span: str) -> str:
        """String with a short TTL: the worker fetching range ``span`` right now."""
        return self._key("backfill", "claim", span)

    @property
    def backfill_queue(self) -> str:
        """Name of the rq queue of this network's backfill jobs."""
        return self._key("backfill")

    @property
    def snapshot(self) -> str:
        """Hash: ``id`` (peers stream id it covers through) and ``data`` (the full peer set)."""
        return self._key("peers", "snapshot")
