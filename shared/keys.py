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

    def output(self, stage: str) -> str:
        """The stream ``stage`` appends to."""
        return {"registry": self.registry, "ipam": self.peers}[stage]

    def input(self, stage: str) -> str:
        """The stream ``stage`` reads."""
        return {"registry": self.events, "ipam": self.registry}[stage]

    @property
    def hosts(self) -> str:
        """Hash: node id -> JSON announcement (endpoint) written by that node's agent."""
        return self._key("hosts")

    def host_status(self, node_id: str) -> str:
        """Hash: one agent's applied position, lag, last apply and last error."""
        return self._key("host", node_id, "status")
