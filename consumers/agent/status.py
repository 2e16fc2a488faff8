"""This host's status hash, ``…:host:<node>:status`` (I/O).

Written after applies, at most every :data:`COALESCE_SECONDS` while changes keep
coming (the last one is never dropped: the loop waits at most until it is due), and
at least once per reconcile interval as a heartbeat. Usually it rides in the same
round trip as the next read of the stream (:meth:`consumers.agent.follow.Follower.read`).

Lag costs nothing when the agent is caught up (its last read returned less than a
full batch and it applied everything it read); only an agent that is behind counts
the entries it has not applied, at most every :data:`LAG_COUNT_SECONDS`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import redis

from shared.keys import Keys
from shared.redis_log import START, as_str

if TYPE_CHECKING:
    from consumers.agent.agent import Agent

#: Seconds between two status writes while changes keep coming.
COALESCE_SECONDS: Final = 0.2
#: Seconds between two counts of the entries an agent that is behind has not applied.
LAG_COUNT_SECONDS: Final = 5.0
#: Most entries counted when reporting lag (entries); more shows as this number.
LAG_COUNT_CAP: Final = 10_000


def stream_ms(entry_id: str) -> int:
    """The milliseconds part of a stream id (0 for ``0-0``)."""
    return int(entry_id.split("-", 1)[0]) if entry_id and entry_id != START else 0


class Status:
    """When to write the status hash, and its lag fields."""

    def __init__(self, client: redis.Redis, keys: Keys, node_id: str, heartbeat: float) -> None:
        self.client = client
        self.keys = keys
        self.key = keys.host_status(node_id)
        self.heartbeat = heartbeat
        self.pending = True
        self.last_write = float("-inf")
        self._lag: tuple[int, float] = (0, 0.0)
        self._lag_at = float("-inf")
        self._lag_of = ""

    def mark(self) -> None:
        """Something worth reporting changed."""
        self.pending = True

    def due_in(self, now: float) -> float:
        """Seconds until the next write is due (0: now)."""
        wait = COALESCE_SECONDS if self.pending else self.heartbeat
        return max(0.0, self.last_write + wait - now)

    def written(self, now: float) -> None:
        self.pending = False
        self.last_write = now

    def lag(self, applied: str, position: str, caught_up: bool) -> tuple[int, float]:
        """(entries, seconds) the applied state is behind the stream's newest entry."""
        if caught_up and applied == position:
            return 0, 0.0
        now = time.monotonic()
        if self._lag_of == applied and now - self._lag_at < LAG_COUNT_SECONDS:
            return self._lag
        pipe = self.client.pipeline(transaction=False)
        pipe.xrevrange(self.keys.peers, count=1)
        low = f"({applied}" if applied != START else "-"
        pipe.xrange(self.keys.peers, min=low, count=LAG_COUNT_CAP)
        last, pending = pipe.execute()
        last_id = as_str(last[0][0]) if last else START
        self._lag = (len(pending), max(0, stream_ms(last_id) - stream_ms(applied)) / 1000)
        self._lag_at, self._lag_of = now, applied
        return self._lag

    def write(self, fields: Mapping[str, Any]) -> None:
        """Write now (outside a read's round trip)."""
        self.client.hset(self.key, mapping=dict(fields))  # type: ignore[arg-type]
        self.written(time.monotonic())


def status_fields(agent: Agent) -> dict[str, Any]:
    """The fields of an agent's status hash (README, "Agent": the status fields)."""
    follower, iface, cfg = agent.follower, agent.iface, agent.cfg
    lag_entries, lag_seconds = agent.status.lag(
        agent.applied_position, follower.position, follower.caught_up
    )
    return {
        "node": cfg.node_id,
        "interface": cfg.interface,
        "mode": "file-only" if agent.wg is None else "wireguard",
        "public_key": agent.own_public_key or "",
        "applied_position": agent.applied_position,
        "applied_block": agent.applied_block,
        "lag_entries": lag_entries,
        "lag_seconds": lag_seconds,
        "last_apply": agent.last_apply,
        "last_error": agent.last_error,
        "peer_count": len(iface.applied),
        "fail_closed": iface.fail_closed or "",
        "addresses": ",".join(iface.addresses),
        "reconcile_interval": cfg.reconcile_interval,
        "handshake_latest": iface.handshake_latest,
        "held": agent.hold.reason(follower.block),
        "updated_at": time.time(),
    }
