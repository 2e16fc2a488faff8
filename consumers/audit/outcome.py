"""What an audit replay compares: the live side read at one instant (:func:`snapshot`),
the prefixes of the output streams a bound covers, and the outcome of each projection
(OK, DIFF or SKIP). Used by :mod:`consumers.audit.replay`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import redis

from consumers.audit.entries import Decoded
from shared.ids import START, id_key
from shared.keys import Keys
from shared.redis_log import as_str, redis_retry

#: The stages a replay compares, in pipeline order.
STAGES: Final = ("registry", "ipam")


@dataclass(frozen=True)
class Snapshot:
    """The live positions and state hashes, read atomically."""

    events_last: str
    registry_last: str
    positions: dict[str, str]
    states: dict[str, dict[str, bytes]]
    peers_last: str = START


@dataclass
class Outcome:
    """The comparison of one projection."""

    name: str
    status: str  # OK, DIFF or SKIP
    detail: str
    diff: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What a replay covered and how each projection compared."""

    bound: str
    entries: int
    #: The scratch namespace the real stages ran in ("": folded in process).
    scratch: str
    notes: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.status != "DIFF" for o in self.outcomes)


def snapshot(client: redis.Redis, keys: Keys) -> Snapshot:
    """Positions, state hashes and the last ids of ``events`` and ``registry``, atomically."""

    def read() -> list[Any]:
        pipe = client.pipeline(transaction=True)
        pipe.xrevrange(keys.events, count=1)
        pipe.xrevrange(keys.registry, count=1)
        pipe.xrevrange(keys.peers, count=1)
        for stage in STAGES:
            pipe.get(keys.position(stage))
            pipe.hgetall(keys.state(stage))
        result: list[Any] = pipe.execute()
        return result

    ev, reg, peers, reg_pos, reg_state, ipam_pos, ipam_state = redis_retry(read)
    return Snapshot(
        events_last=as_str(ev[0][0]) if ev else START,
        registry_last=as_str(reg[0][0]) if reg else START,
        peers_last=as_str(peers[0][0]) if peers else START,
        positions={
            "registry": as_str(reg_pos) if reg_pos else START,
            "ipam": as_str(ipam_pos) if ipam_pos else START,
        },
        states={
            "registry": {as_str(k): v for k, v in reg_state.items()},
            "ipam": {as_str(k): v for k, v in ipam_state.items()},
        },
    )


def registry_prefix(registry: list[Decoded], bound: str) -> list[Decoded]:
    """The registry entries caused by events up to ``bound`` (a prefix of the stream)."""
    limit = id_key(bound)
    out: list[Decoded] = []
    for entry_id, entry in registry:
        cause = getattr(entry, "cause", None)
        if isinstance(cause, str) and id_key(cause) > limit:
            break
        out.append((entry_id, entry))
    return out


def peers_prefix(peers: list[Decoded], registry: list[Decoded], bound: str) -> list[Decoded]:
    """The peers entries caused by events up to ``bound`` (a prefix of the stream).

    A peers entry's ``cause`` is the ``registry`` entry it came from (a retraction's
    too); ``registry`` holds the registry prefix of the same bound.
    """
    known = {i for i, _ in registry}
    out: list[Decoded] = []
    for entry_id, entry in peers:
        cause = getattr(entry, "cause", None)
        if isinstance(cause, str) and cause not in known:
            break
        out.append((entry_id, entry))
    return out


__all__ = ["STAGES", "Outcome", "Report", "Snapshot", "peers_prefix", "registry_prefix", "snapshot"]
